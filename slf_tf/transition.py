"""The noise matrix of the ``forward`` candidate, estimated on the clean split (Gold Loss Correction).

``T[i, j]`` = P(noisy training label j | clean label i). Hendrycks et al. 2018 ("Using trusted data to train
deep networks on labels corrupted by severe noise") estimate row ``i`` as the mean softmax, over the trusted
(clean) examples of class ``i``, of a network trained on the noisy labels. Here that network is the main
network at the restart point (40% of the budget), before fresh weights replace it (docs/design.md, "What
closes it").

That network has trained on SLF's mixture, mostly robust losses, so its softmax sits nearer the clean labels
than a cross-entropy network's would, and the plain estimate under-states the noise. Given the noisy training
split, :func:`from_network` first recalibrates the logits to predict the noisy training labels
(:func:`calibrate`: the temperature that fits them best, then matrix scaling, an affine map of the logits
fitted to them), then averages the recalibrated softmax. A temperature can only spread the network's mass
over the classes it already confuses; the matrix learns which class's evidence the noisy labels follow
(a flip from class i to class j), which a network trained on robust losses no longer shows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.optimize
import tensorflow as tf

__all__ = ["Calibration", "calibrate", "check", "estimate", "fit_temperature", "from_network"]

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


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Logits recalibrated to the noisy training labels: ``(logits / temperature) @ matrix + bias``."""

    temperature: float
    matrix: np.ndarray  # [C, C]
    bias: np.ndarray  # [C]

    @classmethod
    def identity(cls, num_classes: int) -> Calibration:
        """No recalibration (GLC as published; or no noisy training labels to fit)."""
        return cls(1.0, np.eye(num_classes), np.zeros(num_classes))

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return (np.asarray(logits, np.float64) / self.temperature) @ self.matrix + self.bias

    def describe(self) -> str:
        if self == Calibration.identity(len(self.bias)):
            return "not recalibrated"
        return f"recalibrated to the noisy training labels: temperature {self.temperature:.3g}, then matrix scaling"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Calibration)
            and self.temperature == other.temperature
            and np.array_equal(self.matrix, other.matrix)
            and np.array_equal(self.bias, other.bias)
        )

    __hash__ = None


MATRIX_L2 = 1e-3  # pulls the matrix towards the identity (the temperature's fit) where the labels say little


def calibrate(logits: np.ndarray, labels: np.ndarray) -> Calibration:
    """The affine map of ``logits [n, C]`` under whose softmax ``labels`` are likeliest: :func:`fit_temperature`,
    then matrix scaling (Guo et al. 2017) started from it, a multinomial logistic regression of the labels on
    the tempered logits (L-BFGS; an L2 pull of ``MATRIX_L2`` towards the identity)."""
    tau = fit_temperature(logits, labels)
    z = np.asarray(logits, np.float64) / tau
    labels = np.asarray(labels).reshape(-1)
    n, c = z.shape
    one_hot = np.eye(c)[labels]
    eye = np.eye(c)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        matrix, bias = theta[: c * c].reshape(c, c), theta[c * c :]
        a = z @ matrix + bias
        p = np.exp(a - a.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        nll = -np.mean(np.log(p[np.arange(n), labels] + 1e-12))
        residual = (p - one_hot) / n
        grad_matrix = z.T @ residual + MATRIX_L2 * (matrix - eye)
        value = nll + 0.5 * MATRIX_L2 * np.sum((matrix - eye) ** 2)
        return value, np.concatenate([grad_matrix.ravel(), residual.sum(axis=0)])

    start = np.concatenate([eye.ravel(), np.zeros(c)])
    fit = scipy.optimize.minimize(objective, start, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    matrix, bias = fit.x[: c * c].reshape(c, c), fit.x[c * c :]
    if not (np.isfinite(matrix).all() and np.isfinite(bias).all()):  # never: the objective is convex and smooth
        return Calibration(tau, eye, np.zeros(c))
    return Calibration(tau, matrix, bias)


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
) -> tuple[np.ndarray, Calibration]:
    """``(T, calibration)``: :func:`estimate` from ``network``'s recalibrated softmax on the clean examples
    ``(x, y)`` (labels or one-hot).

    ``noisy``: the noisy training split ``(x, y)`` as arrays; the calibration is fitted to its labels
    (:func:`calibrate`; every k-th example, so that at most ``max_noisy`` are read). Without it there is none
    (GLC as published). A network with probability outputs (``from_logits=False``) is read through their
    logarithm.
    """

    def logits_of(inputs: Any) -> np.ndarray:
        outputs = _outputs(network, inputs, batch_size)
        return outputs if from_logits else np.log(np.clip(outputs, 1e-12, 1.0))

    calibration = Calibration.identity(num_classes)
    if noisy is not None:
        x_noisy, y_noisy = np.asarray(noisy[0]), _labels(noisy[1], num_classes)
        every = -(-len(y_noisy) // max_noisy)  # ceil: a spread subset, whatever order the split is in
        calibration = calibrate(logits_of(x_noisy[::every]), y_noisy[::every])
    probabilities = tf.nn.softmax(calibration(logits_of(x))).numpy()
    return estimate(probabilities, _labels(y, num_classes), num_classes), calibration
