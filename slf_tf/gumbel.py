"""The Gumbel distribution, Gumbel-Max and (multiple) Gumbel-Softmax sampling.

References:
  Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", 2017.
  Maddison, Mnih & Teh, "The Concrete Distribution", 2017.

Limits of the relaxed sample ``y = softmax((logits + g) / tau)``: as ``tau -> 0``
it becomes the one-hot Gumbel-Max draw (exact categorical sample, zero gradient);
as ``tau -> inf`` it becomes the uniform vector ``1/N``.

Numerics: uniforms are drawn from ``[finfo.tiny, 1)`` so that ``log(u)`` is finite
and ``-log(u) > 0``; the Gumbel noise is therefore finite (between about -4.5 and
16.6 in float32). Noise is drawn and combined in float32 for half-precision
inputs (float64 stays float64) and the result is cast back to the input dtype,
so float16/bfloat16 logits, tiny temperatures and logits of +-1e4 give no NaN/Inf.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from slf_tf import checks, rng

tfd = tfp.distributions

__all__ = [
    "gumbel_noise",
    "gumbel_sample",
    "gumbel_log_pdf",
    "gumbel_pdf",
    "gumbel_cdf",
    "gumbel_log_cdf",
    "gumbel_max",
    "gumbel_softmax",
    "log_gumbel_softmax",
    "multi_gumbel_softmax",
    "inclusion_probabilities",
    "straight_through",
]


# --------------------------------------------------------------------------- #
# The Gumbel(loc, scale) distribution.
# --------------------------------------------------------------------------- #


def _neg_gumbel_noise(shape: Any, seed: checks.Seed, dtype: tf.DType) -> tf.Tensor:
    """``log(-log u) = -g`` for ``u ~ U[tiny, 1)``: the negated Gumbel noise, in 3 kernels.

    The raw Philox op draws ``u`` in ``[0, 1)``; ``max(u, tiny)`` moves the single
    value 0 (probability 2^-24 in float32) to ``tiny`` so ``log(u)`` is finite, and the
    open upper end keeps ``-log(u) > 0``. Returning ``-g`` lets callers subtract
    instead of negating (the sampler is a hot path: this is what keeps it at or
    below TFP's cost).
    """
    tiny = np.finfo(dtype.as_numpy_dtype).tiny
    u = tf.raw_ops.StatelessRandomUniform(shape=shape, seed=rng.as_seed(seed), dtype=dtype)
    return tf.math.log(-tf.math.log(tf.maximum(u, tiny)))


def gumbel_noise(shape: Any, seed: checks.Seed, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Standard Gumbel(0, 1) noise ``g = -log(-log u)`` with ``u ~ U[tiny, 1)``.

    Args:
      shape: output shape (list or int tensor).
      seed: stateless seed (int, pair, or int tensor of shape [2]); None is
        non-reproducible.
      dtype: float32 or float64.

    Returns:
      A tensor of ``shape`` and ``dtype``; every value is finite.
    """
    return -_neg_gumbel_noise(shape, seed, dtype)


def gumbel_sample(
    shape: Any,
    loc: float | tf.Tensor = 0.0,
    scale: float | tf.Tensor = 1.0,
    seed: checks.Seed = None,
    dtype: tf.DType = tf.float32,
) -> tf.Tensor:
    """Samples Gumbel(loc, scale): ``loc + scale * g``."""
    checks.check_positive(scale, name="scale")
    return tf.cast(loc, dtype) + tf.cast(scale, dtype) * gumbel_noise(shape, seed, dtype)


def _gumbel(x: Any, loc: Any, scale: Any) -> tuple[tf.Tensor, tfd.Gumbel]:
    """Returns ``x`` as a tensor and a TFP Gumbel in its dtype (float32 for Python numbers)."""
    checks.check_positive(scale, name="scale")
    x = checks.as_tensor(x)
    return x, tfd.Gumbel(loc=tf.cast(loc, x.dtype), scale=tf.cast(scale, x.dtype))


def gumbel_log_pdf(x: Any, loc: Any = 0.0, scale: Any = 1.0) -> tf.Tensor:
    """``log f(x) = -z - exp(-z) - log(scale)`` with ``z = (x - loc) / scale``."""
    x, dist = _gumbel(x, loc, scale)
    return dist.log_prob(x)


def gumbel_pdf(x: Any, loc: Any = 0.0, scale: Any = 1.0) -> tf.Tensor:
    """Gumbel density ``exp(-z - exp(-z)) / scale``."""
    x, dist = _gumbel(x, loc, scale)
    return dist.prob(x)


def gumbel_cdf(x: Any, loc: Any = 0.0, scale: Any = 1.0) -> tf.Tensor:
    """``F(x) = exp(-exp(-z))``, ``z = (x - loc) / scale`` (note the minus inside)."""
    x, dist = _gumbel(x, loc, scale)
    return dist.cdf(x)


def gumbel_log_cdf(x: Any, loc: Any = 0.0, scale: Any = 1.0) -> tf.Tensor:
    """``log F(x) = -exp(-z)``."""
    x, dist = _gumbel(x, loc, scale)
    return dist.log_cdf(x)


# --------------------------------------------------------------------------- #
# Categorical sampling.
# --------------------------------------------------------------------------- #


def straight_through(soft: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """One-hot ``argmax(soft)`` forward; identity gradient into ``soft`` backward.

    Written as ``hard + (soft - stop_gradient(soft))``: the bracket is exactly 0
    in floating point, so the forward value is exactly one-hot.
    """
    hard = tf.one_hot(tf.argmax(soft, axis=axis), tf.shape(soft)[axis], axis=axis, dtype=soft.dtype)
    return hard + (soft - tf.stop_gradient(soft))


def _noisy_logits(logits: Any, seed: checks.Seed, extra_shape: tuple[int, ...] = ()):
    """Returns (validated logits, logits + Gumbel noise in the compute dtype)."""
    logits = checks.check_logits(logits)
    dtype = checks.compute_dtype(logits.dtype)
    x = tf.cast(logits, dtype)
    shape = tf.concat([list(extra_shape), tf.shape(x)], axis=0) if extra_shape else tf.shape(x)
    return logits, x - _neg_gumbel_noise(shape, seed, dtype)


def gumbel_max(logits: Any, seed: checks.Seed = None) -> tf.Tensor:
    """An exact categorical draw as a one-hot vector: ``one_hot(argmax(logits + g))``.

    Args:
      logits: ``[..., N]`` unnormalised log-probabilities (float).
      seed: stateless seed.

    Returns:
      ``[..., N]`` one-hot, in the dtype of ``logits``; no gradient.
    """
    logits, noisy = _noisy_logits(logits, seed)
    return tf.one_hot(tf.argmax(noisy, axis=-1), tf.shape(logits)[-1], dtype=logits.dtype)


def gumbel_softmax(
    logits: Any,
    temperature: float | tf.Tensor,
    hard: bool = False,
    seed: checks.Seed = None,
) -> tf.Tensor:
    """A relaxed one-hot sample ``softmax((logits + g) / temperature)``.

    Args:
      logits: ``[..., N]`` unnormalised log-probabilities (any float dtype).
      temperature: scalar > 0. ``tau -> 0``: one-hot; ``tau -> inf``: uniform.
      hard: if True, the straight-through Gumbel-Softmax: the forward value is
        the one-hot ``argmax`` (exactly), the gradient is the soft sample's.
      seed: stateless seed (int, pair or int tensor ``[2]``).

    Returns:
      ``[..., N]`` in the dtype of ``logits``, rows on the simplex.
    """
    checks.check_positive(temperature, name="temperature")
    logits, noisy = _noisy_logits(logits, seed)
    y = tf.nn.softmax(noisy * (1.0 / tf.cast(temperature, noisy.dtype)), axis=-1)
    if hard:
        y = straight_through(y)
    return tf.cast(y, logits.dtype)


def log_gumbel_softmax(logits: Any, temperature: float | tf.Tensor, seed: checks.Seed = None) -> tf.Tensor:
    """``log`` of :func:`gumbel_softmax`, computed stably (an ExpRelaxedOneHotCategorical sample).

    Use it when the sample feeds a log (e.g. a KL), where ``log(y)`` would
    underflow to ``-inf`` at small temperatures. For float16/bfloat16 inputs,
    log-probabilities below the dtype's most negative finite value are clamped
    to it.
    """
    checks.check_positive(temperature, name="temperature")
    logits, noisy = _noisy_logits(logits, seed)
    log_y = tf.nn.log_softmax(noisy / tf.cast(temperature, noisy.dtype), axis=-1)
    if logits.dtype != log_y.dtype:  # half types: clamp what they cannot hold instead of -inf
        log_y = tf.maximum(log_y, tf.cast(logits.dtype.min, log_y.dtype))
    return tf.cast(log_y, logits.dtype)


def multi_gumbel_softmax(
    logits: Any,
    k: int,
    temperature: float | tf.Tensor,
    hard: bool = False,
    seed: checks.Seed = None,
) -> tf.Tensor:
    """Soft counts ``s = sum_{j=1..k} y^(j)`` of ``k`` independent Gumbel-Softmax draws.

    With ``hard=True`` each draw is straight-through, so ``s`` holds integer
    counts (``sum(s) == k``) and ``1[s >= 1]`` marks the categories drawn at least
    once, which happens with probability :func:`inclusion_probabilities`.

    Args:
      logits: ``[..., N]``.
      k: number of draws, an integer >= 1.
      temperature: scalar > 0.
      hard: straight-through draws.
      seed: stateless seed.

    Returns:
      ``[..., N]`` soft counts in the dtype of ``logits``; each row sums to ``k``.
    """
    checks.check_k(k)
    checks.check_positive(temperature, name="temperature")
    logits, noisy = _noisy_logits(logits, seed, extra_shape=(k,))
    y = tf.nn.softmax(noisy / tf.cast(temperature, noisy.dtype), axis=-1)
    if hard:
        y = straight_through(y)
    return tf.cast(tf.reduce_sum(y, axis=0), logits.dtype)


def inclusion_probabilities(logits: Any, k: int | str) -> tf.Tensor:
    """``P(category i drawn at least once in k draws) = 1 - (1 - p_i)^k``.

    ``k="inf"`` gives ones. Computed as ``-expm1(k * log1p(-p))`` for accuracy
    when ``p`` is small.
    """
    checks.check_k(k, allow_inf=True)
    logits = checks.check_logits(logits)
    if k == "inf" or (isinstance(k, float) and np.isinf(k)):
        return tf.ones_like(logits)
    dtype = checks.compute_dtype(logits.dtype)
    p = tf.nn.softmax(tf.cast(logits, dtype), axis=-1)
    return tf.cast(-tf.math.expm1(float(k) * tf.math.log1p(-p)), logits.dtype)
