"""Temperature schedules ``tau(step)`` for Gumbel-Softmax sampling.

Jang et al. (2017) advise starting with a large temperature and annealing it;
:class:`ExponentialAnneal` is their ``max(tau_min, tau_0 * exp(-r t))``. Every
schedule is a Keras-serialisable callable: ``get_config`` / ``from_config``
round-trip, and :func:`get` rebuilds one from a number, a dict or a name.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from slf_tf import checks

__all__ = ["TemperatureSchedule", "ConstantTemperature", "ExponentialAnneal", "CosineAnneal", "get"]


class TemperatureSchedule:
    """Base class: ``schedule(step) -> float32 scalar tensor``, always > 0."""

    def __call__(self, step: Any) -> tf.Tensor:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TemperatureSchedule:
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="slf_tf")
class ConstantTemperature(TemperatureSchedule):
    """``tau(t) = value``."""

    def __init__(self, value: float = 1.0):
        checks.check_positive(value, name="temperature")
        self.value = float(value)

    def __call__(self, step):
        del step
        return tf.constant(self.value, tf.float32)

    def get_config(self):
        return {"value": self.value}


@keras.saving.register_keras_serializable(package="slf_tf")
class ExponentialAnneal(TemperatureSchedule):
    """``tau(t) = max(minimum, initial * exp(-rate * t))`` (Jang et al., 2017)."""

    def __init__(self, initial: float = 5.0, rate: float = 1e-3, minimum: float = 0.5):
        checks.check_positive(initial, name="initial")
        checks.check_positive(minimum, name="minimum")
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"rate must be a finite number >= 0; got {rate!r}.")
        self.initial, self.rate, self.minimum = float(initial), float(rate), float(minimum)

    def __call__(self, step):
        t = tf.cast(step, tf.float32)
        return tf.maximum(self.minimum, self.initial * tf.exp(-self.rate * t))

    def get_config(self):
        return {"initial": self.initial, "rate": self.rate, "minimum": self.minimum}


@keras.saving.register_keras_serializable(package="slf_tf")
class CosineAnneal(TemperatureSchedule):
    """Half-cosine from ``initial`` to ``final`` over ``decay_steps``, then ``final``."""

    def __init__(self, initial: float = 5.0, final: float = 0.5, decay_steps: int = 1000):
        checks.check_positive(initial, name="initial")
        checks.check_positive(final, name="final")
        if isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps < 1:
            raise ValueError(f"decay_steps must be an integer >= 1; got {decay_steps!r}.")
        self.initial, self.final, self.decay_steps = float(initial), float(final), int(decay_steps)

    def __call__(self, step):
        frac = tf.minimum(tf.cast(step, tf.float32) / self.decay_steps, 1.0)
        return self.final + 0.5 * (self.initial - self.final) * (1.0 + tf.cos(math.pi * frac))

    def get_config(self):
        return {"initial": self.initial, "final": self.final, "decay_steps": self.decay_steps}


_BY_NAME: dict[str, type[TemperatureSchedule]] = {
    "constant": ConstantTemperature,
    "exponential": ExponentialAnneal,
    "cosine": CosineAnneal,
}


def get(identifier: Any) -> TemperatureSchedule:
    """A schedule from a schedule, a positive number (constant), a name, or a config dict.

    Dicts are either ``{"class_name": ..., "config": {...}}`` (Keras style) or
    ``{"kind": "exponential", "initial": 5.0, ...}``.
    """
    if isinstance(identifier, TemperatureSchedule):
        return identifier
    if isinstance(identifier, (int, float)) and not isinstance(identifier, bool):
        return ConstantTemperature(identifier)
    if isinstance(identifier, str):
        if identifier not in _BY_NAME:
            raise ValueError(f"Unknown temperature schedule {identifier!r}; known: {sorted(_BY_NAME)}.")
        return _BY_NAME[identifier]()
    if isinstance(identifier, dict):
        if "class_name" in identifier:
            by_class = {cls.__name__: cls for cls in _BY_NAME.values()}
            name = identifier["class_name"].split(">")[-1]
            if name not in by_class:
                raise ValueError(f"Unknown temperature schedule class {name!r}; known: {sorted(by_class)}.")
            return by_class[name].from_config(identifier.get("config", {}))
        config = dict(identifier)
        kind = config.pop("kind", None)
        if kind not in _BY_NAME:
            raise ValueError(f"Unknown temperature schedule kind {kind!r}; known: {sorted(_BY_NAME)}.")
        return _BY_NAME[kind](**config)
    raise ValueError(
        f"Cannot make a temperature schedule from {identifier!r}: pass a number > 0, "
        f"one of {sorted(_BY_NAME)}, a config dict or a TemperatureSchedule."
    )


def serialize(schedule: TemperatureSchedule) -> dict[str, Any]:
    """The ``{"class_name", "config"}`` dict that :func:`get` reads back."""
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}
