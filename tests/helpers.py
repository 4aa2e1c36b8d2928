"""Shared test helpers."""

from configs import test as test_config
from slf_tf.training.config_checks import with_overrides


def config(**overrides):
    """``configs/test.py`` with dotted overrides, e.g. ``config(**{"model.name": "cnn"}, seed=1)``."""
    return with_overrides(test_config.get_config(), overrides)
