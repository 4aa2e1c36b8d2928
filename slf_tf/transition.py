"""The noise matrix of the ``forward`` candidate, estimated on the clean split (Gold Loss Correction).

``T[i, j]`` = P(noisy training label j | clean label i). Hendrycks et al. 2018 ("Using trusted data to train
deep networks on labels corrupted by severe noise") estimate row ``i`` as the mean softmax, over the trusted
(clean) examples of class ``i``, of a network trained on the noisy labels. Here that network is the main
network at the restart point (40% of the budget), before fresh weights replace it (docs/design.md, "What
closes it").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["check", "estimate", "from_network"]


def estimate(probabilities: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``T [C, C]``: row ``i`` the mean of ``probabilities [n, C]`` over the examples labelled ``i``.

    A class with no clean example keeps the identity row (its noise is unknown: no correction).
    """
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if probabilities.shape != (len(labels), num_classes):
        raise ValueError(
            f"probabilities must be [n, {num_classes}] for {len(labels)} labels; got shape {probabilities.shape}."
        )
    T = np.eye(num_classes)
    for i in range(num_classes):
        rows = probabilities[labels == i]
        if len(rows):
            T[i] = rows.mean(axis=0) / rows.mean(axis=0).sum()
    return check(T.astype(np.float32), num_classes)


def check(T: Any, num_classes: int) -> np.ndarray:
    """``T`` as float32 ``[C, C]``, or a ValueError naming what is wrong: its shape, or a row that is not
    a distribution (non-negative, finite, summing to 1)."""
    T = np.asarray(T, np.float32)
    if T.shape != (num_classes, num_classes):
        raise ValueError(f"The noise matrix must be [{num_classes}, {num_classes}]; got shape {T.shape}.")
    bad = ~np.isfinite(T).all(axis=1) | (T < 0).any(axis=1) | (np.abs(T.sum(axis=1) - 1.0) > 1e-3)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"Row {i} of the noise matrix is not a distribution (>= 0, summing to 1): {T[i].tolist()}.")
    return T


def from_network(
    network: Any, x: Any, y: Any, num_classes: int, from_logits: bool = True, batch_size: int = 512
) -> np.ndarray:
    """:func:`estimate` from ``network``'s probabilities on the clean examples ``(x, y)`` (labels or one-hot)."""
    outputs = np.concatenate(
        [np.asarray(network(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
    )
    probabilities = tf.nn.softmax(outputs).numpy() if from_logits else outputs
    y = np.asarray(y)
    if y.ndim > 1 and y.shape[-1] == num_classes:  # one-hot rows
        y = y.argmax(axis=-1)
    return estimate(probabilities, y.reshape(-1), num_classes)
