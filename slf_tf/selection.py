"""From decision logits to loss coefficients: K draws, the B() gate, renormalised weights.

    s = sum_{k=1..K} y^(k)            K relaxed (or straight-through / ILS / exact) draws from alpha
    a = B(s) = 1[s >= theta]          straight-through gate (the top entry is always kept)
    b = softmax(beta) over a          weighting "selected" (or "all", or "none")
    c = a * b                         the coefficients of L_SLF = sum_i c_i L_i

``k="inf"`` selects every candidate: the softmax-weighting case.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from slf_tf import checks, estimators, gumbel

__all__ = ["ESTIMATORS", "WEIGHTINGS", "Selection", "expected_coefficients", "select"]

ESTIMATORS = ("relaxed", "straight_through", "reinforce", "ils")
WEIGHTINGS = ("selected", "all", "none")


class Selection(NamedTuple):
    coefficients: tf.Tensor  # c [N]
    gate: tf.Tensor  # a [N], values in {0, 1}
    weights: tf.Tensor  # b [N]
    counts: tf.Tensor  # s [N], soft counts of the K draws
    log_prob: tf.Tensor  # log-probability of the exact draws (reinforce), else 0


def check_options(k: Any, estimator: str, weighting: str) -> None:
    checks.check_k(k, allow_inf=True)
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown selection estimator {estimator!r}; known: {list(ESTIMATORS)}.")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}; known: {list(WEIGHTINGS)}.")


def _is_inf(k: Any) -> bool:
    return k == "inf" or (isinstance(k, float) and k == float("inf"))


def _gate(s: tf.Tensor, threshold: float) -> tf.Tensor:
    """B(s), keeping the largest entry so that at least one loss is always selected."""
    top = tf.one_hot(tf.argmax(s), tf.shape(s)[0], dtype=s.dtype)
    hard = tf.maximum(tf.cast(s >= threshold, s.dtype), top)
    return hard + (s - tf.stop_gradient(s))


def _combine(presence: tf.Tensor, beta: tf.Tensor, finite: tf.Tensor, weighting: str):
    """Coefficients from (possibly fractional) presence ``a`` and weight logits ``beta``."""
    finite = tf.cast(finite, presence.dtype)
    a = presence * finite
    # A selected set wiped out by masking falls back to every finite candidate.
    a = tf.where(tf.reduce_sum(tf.stop_gradient(a)) > 0, a, finite + (a - tf.stop_gradient(a)))
    if weighting == "none":
        b = tf.ones_like(beta)
        c = a / tf.maximum(tf.reduce_sum(a), 1e-12)
    elif weighting == "all":
        b = tf.nn.softmax(beta)
        c = a * b
    else:  # "selected": softmax over the selected set
        e = tf.exp(beta - tf.reduce_max(beta)) * a
        b = tf.nn.softmax(beta)
        c = e / tf.maximum(tf.reduce_sum(e), 1e-30)
    return a, b, c


def select(
    alpha: tf.Tensor,
    beta: tf.Tensor,
    *,
    k: int | str,
    temperature: Any,
    seed: Any,
    finite: tf.Tensor | None = None,
    estimator: str = "relaxed",
    weighting: str = "selected",
    threshold: float = 0.5,
    ils_step_size: float = 0.1,
) -> Selection:
    """Samples the coefficients ``c [N]`` (differentiable wrt alpha and beta by ``estimator``).

    Args:
      alpha, beta: ``[N]`` selection and weight logits.
      k: the number of draws (>= 1) or ``"inf"``.
      temperature: scalar > 0 for the relaxed draws.
      seed: stateless seed; the same seed gives the same selection.
      finite: ``[N]`` bool, False for candidates masked this step.
      estimator: ``relaxed`` | ``straight_through`` | ``reinforce`` | ``ils``.
      weighting: ``selected`` | ``all`` | ``none``.
      threshold: theta of the gate.
      ils_step_size: c of the ILS estimator.
    """
    n = tf.shape(alpha)[0]
    finite = tf.ones([n], tf.bool) if finite is None else finite
    log_prob = tf.zeros([], alpha.dtype)
    if _is_inf(k):
        counts = tf.ones_like(alpha)
        presence = counts
    else:
        tiled = tf.tile(alpha[None], [k, 1])
        if estimator == "relaxed":
            counts = gumbel.multi_gumbel_softmax(alpha, k, temperature, seed=seed)
        elif estimator == "straight_through":
            counts = gumbel.multi_gumbel_softmax(alpha, k, temperature, hard=True, seed=seed)
        elif estimator == "ils":
            counts = tf.reduce_sum(estimators.ils_sample(tiled, ils_step_size, seed=seed), axis=0)
        else:  # reinforce: exact draws; the gradient comes from log_prob in the decision update
            draws = tf.stop_gradient(gumbel.gumbel_max(tiled, seed=seed))
            counts = tf.reduce_sum(draws, axis=0)
            log_prob = tf.reduce_sum(estimators.categorical_log_prob(tiled, draws))
        presence = _gate(counts, threshold)
    a, b, c = _combine(presence, beta, finite, weighting)
    return Selection(c, a, b, counts, log_prob)


def expected_coefficients(
    alpha: tf.Tensor,
    beta: tf.Tensor,
    *,
    k: int | str,
    finite: tf.Tensor | None = None,
    weighting: str = "selected",
) -> tf.Tensor:
    """Noise-free coefficients for evaluation: inclusion probability ``1 - (1 - p)^K`` in place of ``a``."""
    n = tf.shape(alpha)[0]
    finite = tf.ones([n], tf.bool) if finite is None else finite
    presence = gumbel.inclusion_probabilities(alpha, k)
    return _combine(presence, beta, finite, weighting)[2]
