"""Stateless seeds: every sampler in slf_tf takes an explicit seed.

A seed is an int, a pair of ints, or an int tensor of shape ``[2]``. Training
code derives one seed per step with :func:`step_seed` so that noise is identical
on all replicas, reproducible, and unchanged by a resume. Nothing here touches
TensorFlow's global seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

_INT32_MAX = np.iinfo(np.int32).max


def as_seed(seed: Any) -> tf.Tensor:
    """Converts ``seed`` to an int tensor of shape ``[2]`` for ``tf.random.stateless_*``.

    Args:
      seed: an int, a pair of ints, an int tensor of shape ``[]`` or ``[2]``, or
        None. None draws a fresh, non-reproducible seed (pass a seed to reproduce
        a result).

    Returns:
      An int tensor of shape ``[2]`` (int32 tensors pass through unchanged, else int64).
    """
    if seed is None:
        return tf.random.uniform([2], maxval=_INT32_MAX, dtype=tf.int64)
    if isinstance(seed, bool):
        raise ValueError(f"seed must be an int, a pair of ints or an int tensor; got {seed!r}.")
    if isinstance(seed, (int, np.integer)):
        return tf.constant([int(seed), 0], dtype=tf.int64)
    if isinstance(seed, (tuple, list)):
        if len(seed) != 2:
            raise ValueError(f"seed must be an int or a pair of ints; got {seed!r}.")
        return tf.cast(tf.stack([tf.cast(s, tf.int64) for s in seed]), tf.int64)
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        raise ValueError(f"seed must be an int32 or int64 tensor; got dtype {seed.dtype.name}.")
    if seed.shape.rank == 0:
        seed = tf.cast(seed, tf.int64)
        return tf.stack([seed, tf.constant(0, tf.int64)])
    if seed.shape.rank != 1 or (seed.shape[0] is not None and seed.shape[0] != 2):
        raise ValueError(f"seed tensor must have shape [] or [2]; got {seed.shape}.")
    return seed  # int32 or int64: the stateless ops take either, so no cast on the hot path


def step_seed(seed: Any, step: Any, stream: int = 0) -> tf.Tensor:
    """The seed for training step ``step``: a pure function of ``(seed, step, stream)``.

    ``stream`` separates independent uses within one step (e.g. the selection
    noise and a random baseline) so they never share noise.
    """
    folded = tf.random.experimental.stateless_fold_in(as_seed(seed), tf.cast(step, tf.int64))
    return tf.random.experimental.stateless_fold_in(folded, stream)


def split(seed: Any, num: int = 2) -> tf.Tensor:
    """Splits a seed into ``num`` independent seeds, shape ``[num, 2]``."""
    return tf.random.experimental.stateless_split(as_seed(seed), num=num)
