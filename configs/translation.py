"""Translation with noisy references (slf_tf/experiments/translation.py): number words, English -> German.

Run:  python -m trainers.translation --config configs/translation.py --workdir runs/translation
Runtime and results: docs/experiments.md ("Translation").
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seeds = 3
    c.data_seed = 0  # which numbers are train / val / test (the same for every seed)
    c.train_examples = 4000
    c.val_examples = 300  # the clean split: the decision's signal and the checkpoint selector
    c.test_examples = 2000
    c.token_noise = 0.3  # probability that a training reference's word is replaced by a random word
    c.candidates = ("cross_entropy", "label_smoothing(epsilon=0.1)", "focal(gamma=2.0)", "poly1(epsilon=1.0)",
                    "gce(q=0.7)")  # fmt: skip
    c.units = 64
    c.batch_size = 64
    c.epochs = 12
    c.learning_rate = 5e-3
    c.val_batch_size = 128
    c.slf = ml_collections.ConfigDict()
    c.slf.k = 3  # the library's SLF defaults (configs/digits.py)
    c.slf.temperature = (2.0, 2e-3, 0.5)  # exponential anneal: initial, rate, minimum
    # extra SLF rows (SLFModel settings), reported beside the defaults
    c.slf_variants = ("trust_region=False", "virtual_step=sgd")
    c.slf.restart_fraction = 0.4  # restart the network at 40% of the fit (slf_tf.callbacks.Restart; 0: off)
    return c


def get_test_config():
    c = get_config()
    c.seeds, c.train_examples, c.val_examples, c.test_examples, c.epochs = 1, 128, 32, 32, 1
    c.candidates = ("cross_entropy", "gce(q=0.7)")
    c.units = 16
    return c
