"""Argument checks shared by the samplers, estimators and losses.

Each check raises a ``ValueError`` that names the bad value and what is allowed,
before any sampling happens (so a bad call never burns RNG state or builds half
a graph).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import tensorflow as tf

Seed = int | tuple[int, int] | list[int] | tf.Tensor | None


def static_value(x: Any) -> Any:
    """Returns the Python/NumPy value of ``x`` if it is known at trace time, else None."""
    if isinstance(x, (int, float, np.number)):
        return x
    try:
        return tf.get_static_value(x)
    except (TypeError, ValueError):
        return None


def check_positive(value: Any, name: str) -> None:
    """Raises ``ValueError`` naming ``name`` if a statically known value is not finite and > 0.

    Used for temperatures, step sizes and scales; symbolic tensors (e.g. a
    schedule's value inside ``tf.function``) are not checked.
    """
    known = static_value(value)
    if known is None:
        return
    arr = np.asarray(known, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be a finite number > 0; got {known!r}.")


def check_k(k: Any, allow_inf: bool = False) -> None:
    """Raises ``ValueError`` unless ``k`` is an integer >= 1 (or "inf" when allowed)."""
    if allow_inf and (k == "inf" or (isinstance(k, float) and math.isinf(k) and k > 0)):
        return
    allowed = "an integer >= 1" + (' or "inf"' if allow_inf else "")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be {allowed}; got {k!r} of type {type(k).__name__}.")
    if k < 1:
        raise ValueError(f"k must be {allowed}; got {k!r}.")


def as_tensor(x: Any) -> tf.Tensor:
    """``x`` as a tensor: tensors and NumPy arrays keep their dtype; Python floats become float32."""
    if tf.is_tensor(x):
        return x
    if isinstance(x, (np.ndarray, np.generic)):
        return tf.convert_to_tensor(x)
    return tf.convert_to_tensor(x, dtype_hint=tf.float32)


def check_logits(logits: Any, name: str = "logits") -> tf.Tensor:
    """Converts ``logits`` to a tensor and checks it is floating point with rank >= 1."""
    logits = as_tensor(logits)
    if not logits.dtype.is_floating:
        raise ValueError(
            f"{name} must be floating point (float16, bfloat16, float32, float64); got dtype {logits.dtype.name}."
        )
    if logits.shape.rank is not None and logits.shape.rank < 1:
        raise ValueError(
            f"{name} must have rank >= 1 (the last axis indexes categories); got a scalar of shape {logits.shape}."
        )
    return logits


def compute_dtype(dtype: tf.DType) -> tf.DType:
    """The dtype noise is drawn and combined in: float32 for half types, else ``dtype``.

    Half-precision uniforms cannot get close enough to 0 or 1 for the Gumbel tails,
    and ``(logits + g) / tau`` overflows float16 at small tau, so those are upcast.
    """
    return tf.float64 if dtype == tf.float64 else tf.float32


def warn_if_same_data(x_train: Any, x_val: Any, what: str) -> bool:
    """Warns (and returns True) if the validation inputs are the training inputs: the decision then learns to
    fit the training labels, noise included, which is no validation signal at all."""
    try:
        a, b = np.asarray(x_train), np.asarray(x_val)
    except (TypeError, ValueError):  # nested inputs: not checked
        return False
    if a.shape != b.shape or a.dtype == object or not np.array_equal(a, b):
        return False
    warnings.warn(
        f"{what} holds the training inputs themselves: the decision network would learn from the training "
        "labels (noise included). Pass a clean held-out split.",
        stacklevel=3,
    )
    return True


def check_finite_validation(x: Any, y: Any, what: str) -> None:
    """Refuses non-finite validation inputs or targets: every lookahead that draws one is NaN and skipped,
    so the decision network silently stops learning."""
    for part, values in (("inputs", x), ("labels/targets", y)):
        try:
            a = np.asarray(values)
        except (TypeError, ValueError):  # nested inputs: not checked
            continue
        if a.dtype.kind not in "fc":
            continue
        bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1) if a.ndim else ~np.isfinite(a)
        if np.any(bad):
            raise ValueError(
                f"{what} holds non-finite {part} in {int(bad.sum())} example(s) (the first at index "
                f"{int(np.argmax(bad))}): the validation loss would be NaN whenever one is drawn and the decision "
                "network would stop learning. Drop or impute those examples."
            )


def warn_if_diverged(weights: list, skipped: int, steps: int, what: str) -> bool:
    """Warns when ``fit`` ended with non-finite weights, or skipped steps for want of a finite loss; else False.

    Keras' ``fit`` ends normally either way, and the model then predicts NaN (or was trained on less data)
    with nothing said.
    """
    bad = [getattr(w, "path", getattr(w, "name", "?")) for w in weights if not np.all(np.isfinite(np.asarray(w)))]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        message = (
            f"{what}: the network's weights are not finite after fit ({shown}). Check the inputs' scale "
            "(standardise them), lower the learning rate, or set the optimizer's clipnorm."
        )
    elif skipped:
        message = (
            f"{what}: {skipped} of {steps} training step(s) had no finite candidate loss and were skipped (the "
            "weights were kept). Look for NaN/Inf or extreme values in the inputs and labels."
        )
    else:
        return False
    warnings.warn(message, stacklevel=3)
    return True
