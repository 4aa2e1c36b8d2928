"""Shared test helpers."""

from configs import test as test_config


def config(**overrides):
    """``configs/test.py`` with dotted overrides, e.g. ``config(**{"model.name": "cnn"}, seed=1)``."""
    c = test_config.get_config()
    for key, value in overrides.items():
        node = c
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c
