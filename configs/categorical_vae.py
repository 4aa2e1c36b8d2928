"""Categorical VAE (Jang et al. 2017): 20 x 10 categorical latents, MLP 512-256, Bernoulli decoder.

Run:  python -m trainers.categorical_vae --config configs/categorical_vae.py --workdir runs/vae
      MNIST: --config.data=mnist --config.data_dir=/path/to/mnist --config.steps=50000
             --config.eval_every=2500 --config.tau_rate=1e-4   (the budget in docs/experiments.md)
Runtime (digits, 4 estimators x 5,000 steps): a few minutes on a 2-core CPU;
MNIST at 50,000 steps: ~17 min per estimator.
Measured: see docs/experiments.md (our budget is far below the paper's, so the
numbers are not the paper's; the comparison between estimators is what carries over).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = "digits"  # digits (8x8, offline) | mnist (needs data_dir)
    c.data_dir = ""
    c.latents = 20
    c.classes = 10
    c.hidden = (512, 256)
    c.batch_size = 100
    c.steps = 5000
    c.eval_every = 500
    c.eval_draws = 5
    c.eval_iw_samples = 1000  # the paper's m-sample bound on -log p(x), at the end
    c.learning_rate = 1e-3
    c.tau_rate = 3e-4  # tau = max(tau_minimum, exp(-tau_rate * t))
    c.tau_minimum = 0.5
    c.ils_step_size = 0.1
    c.ils_variant = "corrected"
    c.ils_per_example = True  # ILS steps on each image's loss, not the batch mean (loss_scale = batch size)
    c.estimators = ("gumbel_softmax", "straight_through", "score_function", "ils")
    return c


def get_test_config():
    c = get_config()
    c.steps = 60
    c.eval_every = 30
    c.eval_draws = 1
    c.eval_iw_samples = 8
    c.hidden = (64, 32)
    return c
