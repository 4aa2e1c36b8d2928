"""A run that takes seconds: the end-to-end test config.

Run:  python -m trainers.classify --config configs/test.py --workdir /tmp/slf_test
Runtime: ~10 s on a 2-core CPU (most of it tracing). Expected: finite metrics;
the accuracy is meaningless after 20 steps.
"""

from configs import digits


def get_config():
    config = digits.get_config()
    config.num_train_steps = 20
    config.batch_size = 32
    config.log_every_steps = 5
    config.eval_every_steps = 10
    config.checkpoint_every_steps = 10
    config.model.hidden_units = (32,)
    config.loss.candidates = ("cross_entropy", "focal(gamma=2.0)", "mae")
    config.loss.k = 2
    config.decision.val_batch_size = 32
    config.decision.every = 2
    return config
