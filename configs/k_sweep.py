"""The K sweep: SLF test accuracy against K on clean digits, noisy digits, noisy MNIST.

Run:  python -m trainers.k_sweep --config configs/k_sweep.py --workdir runs/k_sweep \
          [--config.mnist_dir=/path/to/mnist]   # adds the noisy MNIST subset
Runtime: about 10 minutes on a 2-core CPU for the two digits settings x 6 K x 3 seeds
(about 25 more with MNIST). Measured: see docs/experiments.md.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.ks = (1, 2, 3, 5, 10, "inf")
    c.seeds = 3
    c.settings = ("digits_clean", "digits_sym40", "mnist10k_sym40")
    c.mnist_dir = ""
    c.num_train_steps = 1500
    return c


def get_test_config():
    c = get_config()
    c.ks = (1, "inf")
    c.seeds = 1
    c.settings = ("digits_clean",)
    c.num_train_steps = 20
    return c
