"""Every numeric config field is checked (finite, in range) with an error naming it; renamed fields say so."""

import math

import pytest

from configs import test as test_config
from slf_tf.training import config_checks


def _set(config, path, value):
    node = config
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def _bad_values(path):
    integer, low, high, low_in, high_in = config_checks.NUMBERS[path]
    bad = [math.nan, math.inf, -math.inf, True, "3"]
    bad.append(low - 1 if low_in else low)
    if high != math.inf:
        bad.append(high + 1 if high_in else high)
    if integer:
        bad.append(low + 0.5)
    return bad


@pytest.mark.parametrize("path", sorted(config_checks.NUMBERS))
def test_every_numeric_field_is_range_checked_and_named(path):
    config = test_config.get_config()
    config_checks.validate_config(config)  # the test config itself is valid
    for value in _bad_values(path):
        config = test_config.get_config()
        try:
            _set(config, path, value)
        except TypeError:  # ml_collections refuses a type change outright: also a clear, early error
            continue
        if value is True and config_checks._get(config, path) is not True:
            continue  # ml_collections stored True as 1.0 in a float field: a valid value
        with pytest.raises(ValueError, match=f"config.{path} must be"):
            config_checks.validate_config(config)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"loss.temperature.initial": 1e-30}, r"temperature.initial \(1e-30\) is below temperature.minimum"),
        ({"loss.threshold": 5.0}, r"threshold=5.0 exceeds k=2"),
        ({"data.test_fraction": 0.0}, "test_fraction=0 leaves 'digits' no test split"),
        ({"data.val_fraction": 0.6, "data.test_fraction": 0.5}, "val_fraction \\+ test_fraction must be < 1"),
        ({"data.noise_kind": "asym"}, r"Unknown data.noise_kind 'asym'; known: \['symmetric', 'pair'\]"),
    ],
)
def test_combinations_that_make_no_sense(overrides, match):
    config = test_config.get_config()
    for path, value in overrides.items():
        _set(config, path, value)
    with pytest.raises(ValueError, match=match):
        config_checks.validate_config(config)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"model.hidden_units": (-5,)}, r"config.model.hidden_units must be a tuple of integers in \[1, 65536\]"),
        ({"model.hidden_units": (2_000_000_000,)}, r"config.model.hidden_units must be .*got \(2000000000,\)"),
        ({"model.filters": (32, 0)}, r"config.model.filters must be"),
        ({"loss.k": 10**9}, r"config.loss.k=1000000000 exceeds 65536 draws"),
        ({"loss.candidates": tuple(f"focal(gamma={g})" for g in range(65))}, r"lists 65 losses; at most 64"),
        ({"batch_size": 3_000_000_000}, r"config.batch_size must be an integer in \[1, 1.04858e\+06\]"),
        ({"decision.val_batch_size": 10**9}, r"config.decision.val_batch_size must be"),
    ],
)
def test_sizes_that_would_fail_after_minutes_are_refused_at_once(overrides, match):
    config = test_config.get_config()
    if "model.filters" in overrides:
        config.model.filters = (32, 64)
    for path, value in overrides.items():
        _set(config, path, value)
    with pytest.raises(ValueError, match=match):
        config_checks.validate_config(config)


@pytest.mark.parametrize("old", sorted(config_checks.RENAMED))
def test_renamed_fields_name_the_new_one(old):
    config = test_config.get_config()
    node = config
    *parents, leaf = old.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = 1
    with pytest.raises(ValueError, match=f"config.{old} was renamed: use config."):
        config_checks.validate_config(config)
