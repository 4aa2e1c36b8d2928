"""Tests of slf_tf.schedules: values, limits, serialisation, bad input."""

import math

import pytest

from slf_tf import schedules


def test_values():
    assert float(schedules.ConstantTemperature(0.7)(123)) == pytest.approx(0.7)
    exp = schedules.ExponentialAnneal(initial=5.0, rate=0.01, minimum=0.5)
    assert float(exp(0)) == pytest.approx(5.0)
    assert float(exp(100)) == pytest.approx(5.0 * math.exp(-1.0), rel=1e-6)
    assert float(exp(10_000)) == pytest.approx(0.5)  # clamped at tau_min
    cos = schedules.CosineAnneal(initial=4.0, final=1.0, decay_steps=100)
    assert float(cos(0)) == pytest.approx(4.0)
    assert float(cos(50)) == pytest.approx(2.5)
    assert float(cos(100)) == pytest.approx(1.0)
    assert float(cos(1000)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.ConstantTemperature(0.3),
        schedules.ExponentialAnneal(2.0, 1e-3, 0.1),
        schedules.CosineAnneal(3.0, 0.2, 50),
    ],
)
def test_round_trip(schedule):
    assert schedules.get(schedules.serialize(schedule)) == schedule
    assert type(schedule).from_config(schedule.get_config()) == schedule


def test_get_accepts_numbers_names_and_kind_dicts():
    assert schedules.get(0.5) == schedules.ConstantTemperature(0.5)
    assert isinstance(schedules.get("cosine"), schedules.CosineAnneal)
    assert schedules.get({"kind": "exponential", "initial": 3.0}) == schedules.ExponentialAnneal(3.0)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: schedules.ConstantTemperature(0.0), "temperature must be a finite number > 0; got 0.0"),
        (lambda: schedules.ExponentialAnneal(initial=-1.0), "initial must be a finite number > 0; got -1.0"),
        (lambda: schedules.ExponentialAnneal(minimum=0.0), "minimum must be"),
        (lambda: schedules.ExponentialAnneal(rate=-0.1), "rate must be a finite number >= 0; got -0.1"),
        (lambda: schedules.CosineAnneal(decay_steps=0), "decay_steps must be an integer >= 1; got 0"),
        (lambda: schedules.get("linear"), "Unknown temperature schedule 'linear'; known: \\['constant'"),
        (lambda: schedules.get(-2), "temperature must be a finite number > 0; got -2"),
        (lambda: schedules.get([1.0]), "Cannot make a temperature schedule"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()
