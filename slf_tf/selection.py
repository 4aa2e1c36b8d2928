"""From decision logits to loss coefficients: K draws, the B() gate, renormalised weights.

    s = sum_{k=1..K} y^(k)     K draws from Categorical(alpha) by an estimator (TFP distributions)
    a = B(s) = 1[s >= theta]   straight-through gate; the top entry is always kept
    b = softmax(beta)          renormalised over the selected set ("selected"), or not ("all"), or ones ("none")
    c = a * b                  the coefficients of L_SLF = sum_i c_i L_i

``k="inf"`` selects every candidate (a = 1): the softmax-weighting case. Which
estimator draws the ``y^(k)`` decides the gradient ``dc/dalpha``: ``relaxed``
(Gumbel-Softmax, pathwise), ``straight_through``, ``ils`` or ``reinforce`` (exact
draws; the decision update then uses the score function). See docs/design.md.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from slf_tf import checks, estimators, gumbel

__all__ = [
    "ESTIMATORS",
    "WEIGHTINGS",
    "Selection",
    "check_options",
    "create_estimator",
    "expected_coefficients",
    "is_softmax",
    "mask",
    "sample",
]

# Selection estimator name -> the toolkit estimator that draws and differentiates.
ESTIMATORS = {
    "relaxed": "gumbel_softmax",
    "straight_through": "straight_through",
    "reinforce": "score_function",
    "ils": "ils",
}
WEIGHTINGS = ("selected", "all", "none")


class Selection(NamedTuple):
    """One step's choice; every field ``[N]`` except ``draws`` ``[K, N]``."""

    coefficients: tf.Tensor  # c = a * b (before masking non-finite candidates)
    gate: tf.Tensor  # a, values in {0, 1}
    weights: tf.Tensor  # b
    soft_counts: tf.Tensor  # s, the sum of the K draws
    draws: tf.Tensor | None  # the K draws (None for k = "inf")


def is_softmax(k: Any) -> bool:
    """True for ``k = "inf"`` (or float inf): every candidate selected, softmax weighting."""
    return k == "inf" or (isinstance(k, float) and k == float("inf"))


def check_options(k: Any, estimator: str, weighting: str) -> None:
    """Raises ``ValueError`` naming the bad value and the allowed ones."""
    checks.check_k(k, allow_inf=True)
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown selection estimator {estimator!r}; known: {list(ESTIMATORS)}.")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}; known: {list(WEIGHTINGS)}.")


def create_estimator(estimator: str, ils_step_size: float = 0.1) -> estimators.Estimator:
    """The toolkit estimator behind a selection estimator name (from :mod:`slf_tf.estimators`' registry)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown selection estimator {estimator!r}; known: {list(ESTIMATORS)}.")
    name = ESTIMATORS[estimator]
    kwargs = {"step_size": ils_step_size} if name == "ils" else {}
    return estimators.get(name, **kwargs)


def _weigh(presence: tf.Tensor, beta: tf.Tensor, weighting: str) -> tuple[tf.Tensor, tf.Tensor]:
    """``(b, c)`` from presence ``a`` (0/1, or inclusion probabilities) and weight logits ``beta``."""
    if weighting == "none":
        return tf.ones_like(beta), presence / tf.maximum(tf.reduce_sum(presence), 1e-12)
    b = tf.nn.softmax(beta)
    if weighting == "all":
        return b, presence * b
    e = tf.exp(beta - tf.reduce_max(beta)) * presence  # "selected": softmax over the selected set
    return b, e / tf.maximum(tf.reduce_sum(e), 1e-30)


def sample(
    estimator: estimators.Estimator,
    alpha: tf.Tensor,
    beta: tf.Tensor,
    *,
    k: int | str,
    temperature: Any,
    seed: Any,
    weighting: str = "selected",
    threshold: float = 0.5,
) -> Selection:
    """Samples the coefficients ``c [N]``, differentiable wrt ``alpha`` (by the estimator) and ``beta``.

    Args:
      estimator: draws ``[K, N]`` and decides the gradient (:func:`create_estimator`).
      alpha, beta: ``[N]`` selection and weight logits.
      k: the number of draws (>= 1) or ``"inf"``.
      temperature: scalar > 0 of the relaxed draws.
      seed: stateless seed; the same seed gives the same selection.
      weighting: ``selected`` | ``all`` | ``none``.
      threshold: theta of the gate.
    """
    if is_softmax(k):
        draws, soft_counts = None, tf.ones_like(alpha)
        gate = soft_counts
    else:
        draws = estimator.draw(alpha, k, seed, temperature)
        soft_counts = tf.reduce_sum(draws, axis=0)
        gate = estimators.binary_gate(soft_counts, threshold, keep_top=True)
    weights, coefficients = _weigh(gate, beta, weighting)
    return Selection(coefficients, gate, weights, soft_counts, draws)


def expected_coefficients(alpha: tf.Tensor, beta: tf.Tensor, *, k: int | str, weighting: str = "selected") -> tf.Tensor:
    """Noise-free coefficients: the inclusion probability ``1 - (1 - p)^K`` in place of the gate ``a``."""
    return _weigh(gumbel.inclusion_probabilities(alpha, k), beta, weighting)[1]


def mask(coefficients: tf.Tensor, finite: tf.Tensor, fallback: tf.Tensor) -> tf.Tensor:
    """Drops non-finite candidates from ``c`` and spreads their share over the rest.

    The total ``sum(c)`` is kept (all-finite: ``c`` unchanged). If every selected
    candidate is non-finite, the total goes to the finite ones in proportion to
    ``fallback`` (the weights ``b``); if none is finite, ``c`` is all zeros.
    Differentiable in ``coefficients``.
    """
    f = tf.cast(finite, coefficients.dtype)
    total = tf.reduce_sum(coefficients)
    kept = coefficients * f
    spread = tf.cast(fallback, coefficients.dtype) * f
    kept_sum, spread_sum = tf.reduce_sum(kept), tf.reduce_sum(spread)
    use_kept = tf.stop_gradient(kept_sum) > 0
    scale = total / tf.maximum(tf.where(use_kept, kept_sum, spread_sum), 1e-30)  # exactly 1 when all are finite
    return tf.where(use_kept, kept, spread) * scale
