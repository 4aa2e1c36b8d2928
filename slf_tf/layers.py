"""Keras 3 layers: ``GumbelSoftmax`` and ``BinaryGate`` (the B() function).

Both are registered serialisable, so a ``.keras`` model holding them saves and
reloads with identical inference outputs.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from slf_tf import checks, estimators, gumbel, schedules

__all__ = ["GumbelSoftmax", "BinaryGate"]

_INFERENCE_MODES = ("probabilities", "argmax")


@keras.saving.register_keras_serializable(package="slf_tf")
class GumbelSoftmax(keras.layers.Layer):
    """Gumbel-Softmax over the last axis of its input logits ``[..., N]``.

    Training (``training=True``): a relaxed sample ``softmax((logits + g)/tau)``
    (or straight-through one-hot with ``hard=True``). The noise seed comes from
    the call's ``seed`` argument when given (e.g. ``(seed, step)`` for stateless
    training loops), else from the layer's own ``keras.random.SeedGenerator``.
    Inference: deterministic, ``softmax(logits)`` (``inference="probabilities"``)
    or ``one_hot(argmax(logits))`` (``inference="argmax"``).

    Args:
      temperature: a number > 0 or a :mod:`slf_tf.schedules` schedule, evaluated
        at the layer's ``iterations`` counter (incremented at each training call).
      hard: straight-through in training.
      inference: ``"probabilities"`` or ``"argmax"``.
      seed: int seed of the layer's seed generator.
    """

    def __init__(
        self,
        temperature: Any = 1.0,
        hard: bool = False,
        inference: str = "probabilities",
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.schedule = schedules.get(temperature)
        if inference not in _INFERENCE_MODES:
            raise ValueError(f"inference must be one of {_INFERENCE_MODES}; got {inference!r}.")
        self.hard = bool(hard)
        self.inference = inference
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.iterations = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False, name="iterations"
        )

    def call(self, logits, training=None, seed=None):
        logits = checks.check_logits(logits)
        if not training:
            if self.inference == "probabilities":
                return tf.nn.softmax(logits, axis=-1)
            return tf.one_hot(tf.argmax(logits, axis=-1), tf.shape(logits)[-1], dtype=logits.dtype)
        tau = self.schedule(self.iterations.value)
        self.iterations.assign_add(1)
        if seed is None:
            seed = self.seed_generator.next()
        return gumbel.gumbel_softmax(logits, tau, hard=self.hard, seed=seed)

    def compute_output_shape(self, input_shape):
        return input_shape

    def distribution(self, logits: Any) -> tfp.distributions.Distribution:
        """The TFP distribution the layer's training samples follow at its current temperature:
        ``RelaxedOneHotCategorical(tau, logits)`` (straight-through rounds its samples to one-hot)."""
        logits = checks.check_logits(logits)
        tau = tf.cast(self.schedule(tf.convert_to_tensor(self.iterations)), logits.dtype)
        return tfp.distributions.RelaxedOneHotCategorical(tau, logits=logits)

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=schedules.serialize(self.schedule),
            hard=self.hard,
            inference=self.inference,
            seed=self.seed,
        )
        return config


@keras.saving.register_keras_serializable(package="slf_tf")
class BinaryGate(keras.layers.Layer):
    """The B() gate: ``1[s >= threshold]`` forward, straight-through backward.

    Deterministic, so training and inference agree. See
    :func:`slf_tf.estimators.binary_gate` for ``clip``.
    """

    def __init__(self, threshold: float = 0.5, clip: float | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be None or a number > 0; got {clip!r}.")
        self.threshold = float(threshold)
        self.clip = None if clip is None else float(clip)

    def call(self, s):
        return estimators.binary_gate(s, self.threshold, self.clip)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(threshold=self.threshold, clip=self.clip)
        return config
