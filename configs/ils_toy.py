"""ILS toy example 1: 5 random categoricals of dimension 5, learned from single draws.

Run:  python -m trainers.ils_toy --config configs/ils_toy.py --workdir runs/ils_toy
Runtime: about 1-2 minutes on a 2-core CPU (12 settings x 50,000 SGD steps in one tf.function).
Expected: see docs/experiments.md (the reference ILS rule converges almost at once,
as reported; the corrected rule's Euclidean projection saturates on this cost).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_distributions = 5
    c.dim = 5
    c.steps = 50_000
    c.record_every = 250
    c.learning_rate = 0.01
    c.gumbel_temperatures = (0.1, 1.0, 10.0)
    c.ils_steps = (0.1, 0.01, 0.001)
    c.ils_variants = ("corrected", "reference")
    c.st_temperature = 1.0
    return c


def get_test_config():
    c = get_config()
    c.steps = 1000
    c.record_every = 100
    return c
