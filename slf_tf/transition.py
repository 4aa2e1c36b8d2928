"""The noise matrix of the ``forward`` candidate, estimated on the clean split (Gold Loss Correction).

``T[i, j]`` = P(noisy training label j | clean label i). Hendrycks et al. 2018 ("Using trusted data to train
deep networks on labels corrupted by severe noise") estimate row ``i`` as the mean softmax, over the trusted
(clean) examples of class ``i``, of a network trained on the noisy labels. Here that network is the main
network at the restart point (40% of the budget), before fresh weights replace it (docs/design.md, "What
closes it").

That network has trained on SLF's mixture, mostly robust losses, so its softmax sits nearer the clean labels
than a cross-entropy network's would, and the plain estimate under-states the noise. Given the noisy training
split, :func:`from_network` first divides the logits by the temperature under which they best predict the
noisy training labels (:func:`fit_temperature`), then averages.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["check", "estimate", "fit_temperature", "from_network"]

TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(50.0), 241))  # the search grid of fit_temperature


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


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``tau`` (on a log grid over [0.25, 50]) that minimises the mean negative log-likelihood
    of ``labels`` under ``softmax(logits / tau)``: one number, so it can spread the network's mass towards the
    classes it confuses, never reorder them."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or len(logits) != len(labels) or not len(labels):
        raise ValueError(f"logits must be [n, C] for {len(labels)} labels (n > 0); got shape {logits.shape}.")
    if not np.isfinite(logits).all():
        raise ValueError("fit_temperature got non-finite logits.")

    def nll(tau: float) -> float:
        z = logits / tau
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), labels]))

    return float(min(TEMPERATURES, key=nll))


def _outputs(network: Any, x: Any, batch_size: int) -> np.ndarray:
    return np.concatenate(
        [np.asarray(network(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
    ).astype(np.float64)


def _labels(y: Any, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim > 1 and y.shape[-1] == num_classes:  # one-hot rows
        y = y.argmax(axis=-1)
    return y.reshape(-1).astype(np.int64)


def from_network(
    network: Any,
    x: Any,
    y: Any,
    num_classes: int,
    from_logits: bool = True,
    batch_size: int = 512,
    noisy: tuple[Any, Any] | None = None,
    max_noisy: int = 10_000,
) -> tuple[np.ndarray, float]:
    """``(T, tau)``: :func:`estimate` from ``network``'s softmax at temperature ``tau`` on the clean examples
    ``(x, y)`` (labels or one-hot).

    ``noisy``: the noisy training split ``(x, y)`` as arrays; ``tau`` is fitted to its labels
    (:func:`fit_temperature`; every k-th example, so that at most ``max_noisy`` are read). Without it ``tau``
    is 1. A network with probability outputs (``from_logits=False``) is read through their logarithm.
    """

    def logits_of(inputs: Any) -> np.ndarray:
        outputs = _outputs(network, inputs, batch_size)
        return outputs if from_logits else np.log(np.clip(outputs, 1e-12, 1.0))

    tau = 1.0
    if noisy is not None:
        x_noisy, y_noisy = np.asarray(noisy[0]), _labels(noisy[1], num_classes)
        every = -(-len(y_noisy) // max_noisy)  # ceil: a spread subset, whatever order the split is in
        tau = fit_temperature(logits_of(x_noisy[::every]), y_noisy[::every])
    probabilities = tf.nn.softmax(logits_of(x) / tau).numpy()
    return estimate(probabilities, _labels(y, num_classes), num_classes), tau
