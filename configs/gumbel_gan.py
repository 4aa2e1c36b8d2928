"""Gumbel-Softmax GAN over the numbers 0-4.

Run:  python -m trainers.gumbel_gan --config configs/gumbel_gan.py --workdir runs/gumbel_gan
Runtime: well under 2 minutes on a 2-core CPU. Goal: TV(generator, truth) <= 0.05.
Measured: see docs/experiments.md.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.target = (0.15, 0.35, 0.0, 0.3, 0.2)  # number 2 never occurs
    c.noise_dim = 8
    c.hidden = 64
    c.batch_size = 256
    c.steps = 3000
    c.eval_every = 100
    c.learning_rate = 1e-3
    c.tau_initial = 5.0  # start large, anneal (Jang et al. 2017)
    c.tau_rate = 2e-3
    c.tau_minimum = 0.2
    c.hard = False  # True: straight-through (one-hot forward)
    c.minibatch_features = True  # the discriminator also sees the batch mean (against mode collapse)
    return c


def get_test_config():
    c = get_config()
    c.steps = 600
    c.eval_every = 100
    c.tau_rate = 6e-3  # reach tau_min within the short run
    return c
