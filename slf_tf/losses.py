"""The bag of candidate losses: a registry of per-example losses addressed by name.

Every candidate has one signature, ``(y_true, y_pred) -> [batch]``, and is addressed
by a string that may carry keyword parameters::

    slf_tf.losses.get("focal(gamma=2.0)")                  # classification (default task)
    slf_tf.losses.get("huber(delta=0.5)", task="regression")
    slf_tf.losses.get("focal_bce", task="binary")

Tasks and their inputs (``P`` stands for any positions ``d1..dk``, none included):
  * ``classification``: ``y_pred`` ``[batch, P, C]`` logits (``from_logits=True``,
    the default) or probabilities; ``y_true`` integer labels ``[batch, P]`` /
    ``[batch, P, 1]`` (any dtype holding integer values, as Keras casts labels to
    float) or one-hot ``[batch, P, C]``.
  * ``regression``: ``y_pred`` and ``y_true`` ``[batch]`` or ``[batch, P, d]``; a
    candidate averages over ``d``. The box losses (``iou``, ``giou``, ``diou``) take
    ``d = 4``: a box's corners ``(x_min, y_min, x_max, y_max)``, one loss per box.
  * ``binary``: ``y_pred`` ``[batch, P]`` or ``[batch, P, 1]`` logits (or
    probabilities), ``y_true`` in {0, 1} of the same shape.

A candidate gives one loss per position; an example's loss is its mean over
positions, each weighted as Keras weighs it (:func:`position_weights`: the
``sample_weight``, per example or per position, and the Keras mask of ``y_pred``),
so that the batch mean of the example losses is Keras' ``sum_over_batch_size``
loss: the mean over the batch's valid positions.

:class:`LossBag` evaluates several candidates on one batch, computing the shared
pieces (one-hot labels, ``log_softmax``, ``softmax``) once for the whole bag.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import tensorflow as tf

__all__ = [
    "CandidateLoss",
    "LossBag",
    "Prepared",
    "TASKS",
    "get",
    "keras_mask",
    "known",
    "parse",
    "position_weights",
    "prepare",
    "register",
    "reduce_positions",
    "validate_targets",
]

TASKS = ("classification", "regression", "binary")
_EPS = 1e-7  # clip for logs of probabilities given directly (from_logits=False)


class Prepared(NamedTuple):
    """What the candidates of one task share, computed once per batch."""

    y: tf.Tensor  # classification: one-hot [B, P, C]; regression: [B, P, d]; binary: [B, P] (P: positions)
    scores: tf.Tensor  # classification: logits (or probabilities) [B, P, C]; regression: [B, P, d]; binary: [B, P]
    log_p: tf.Tensor | None  # log-probabilities (classification [B, P, C]; binary: log sigmoid [B, P])
    p: tf.Tensor | None  # probabilities
    log_1mp: tf.Tensor | None  # binary only: log(1 - p)
    transition: tf.Tensor | None = None  # classification: [C, C] noise matrix of the `forward` candidate


@dataclasses.dataclass(frozen=True)
class _Spec:
    fn: Callable[..., tf.Tensor]
    task: str
    params: dict[str, tuple[float, Callable[[float], bool], str]]  # name -> (default, valid?, rule)


_REGISTRY: dict[tuple[str, str], _Spec] = {}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; known: {list(TASKS)}.")


def register(name: str, task: str, **params: tuple[float, Callable[[float], bool], str]):
    """Decorator adding a candidate ``fn(prepared: Prepared, **params) -> [batch]`` to the registry.

    ``params`` maps each parameter to ``(default, is_valid, rule_text)``, e.g.
    ``gamma=(2.0, lambda g: g >= 0, ">= 0")``.
    """
    _check_task(task)

    def wrap(fn):
        _REGISTRY[(task, name)] = _Spec(fn, task, params)
        return fn

    return wrap


def _nonneg(x):
    return x >= 0


def _positive(x):
    return x > 0


# --------------------------------------------------------------------------- #
# Classification.
# --------------------------------------------------------------------------- #


def _p_true(t: Prepared) -> tf.Tensor:
    return tf.reduce_sum(t.y * t.p, axis=-1)


def _ce(t: Prepared) -> tf.Tensor:
    return -tf.reduce_sum(t.y * t.log_p, axis=-1)


@register("cross_entropy", "classification")
def _cross_entropy(t):
    return _ce(t)


@register("focal", "classification", gamma=(2.0, _nonneg, ">= 0"))
def _focal(t, gamma):
    """Lin et al. 2017: ``-(1 - p_y)^gamma log p_y``."""
    # max(., eps): a finite gradient at p_y = 1 even for gamma < 1.
    return -tf.reduce_sum(t.y * tf.pow(tf.maximum(1.0 - t.p, _EPS), gamma) * t.log_p, axis=-1)


@register("label_smoothing", "classification", epsilon=(0.1, lambda e: 0 <= e < 1, "in [0, 1)"))
def _label_smoothing(t, epsilon):
    c = tf.cast(tf.shape(t.y)[-1], t.y.dtype)
    return -tf.reduce_sum(((1.0 - epsilon) * t.y + epsilon / c) * t.log_p, axis=-1)


def _margin(t: Prepared) -> tf.Tensor:
    """Crammer-Singer margin violation ``1 + max_{j != y} s_j - s_y`` on the scores."""
    true_score = tf.reduce_sum(t.y * t.scores, axis=-1)
    other = tf.reduce_max(t.scores - t.y * 1e9, axis=-1)
    return 1.0 + other - true_score


@register("forward", "classification")
def _forward(t):
    """Forward correction (Patrini et al. 2017): ``-log((p T)[y])``, ``T[i, j]`` = P(noisy label j | clean i).

    ``T`` is the combined loss's state (``CombinedLoss.transition``): the identity, i.e. cross-entropy, until
    it is estimated on the clean split at the restart (:mod:`slf_tf.transition`, docs/design.md).
    """
    if t.transition is None:
        raise ValueError(
            "The 'forward' candidate needs its noise matrix: use it in a combined loss (e.g. StochasticLoss) "
            "given num_classes, which holds the matrix and estimates it at the restart."
        )
    noisy = tf.tensordot(t.p, tf.cast(t.transition, t.p.dtype), axes=[[t.p.shape.rank - 1], [0]])
    return -tf.math.log(tf.reduce_sum(t.y * noisy, axis=-1) + _EPS)


@register("hinge", "classification")
def _hinge(t):
    """Crammer & Singer multi-class hinge on the scores (logits, or probabilities)."""
    return tf.nn.relu(_margin(t))


@register("squared_hinge", "classification")
def _squared_hinge(t):
    return tf.square(tf.nn.relu(_margin(t)))


@register("brier", "classification")
def _brier(t):
    """Squared error between probabilities and the one-hot label."""
    return tf.reduce_sum(tf.square(t.p - t.y), axis=-1)


@register("mae", "classification")
def _mae_probs(t):
    """``sum |p - y| = 2 (1 - p_y)``: robust to label noise (Ghosh et al. 2017)."""
    return tf.reduce_sum(tf.abs(t.p - t.y), axis=-1)


@register("gce", "classification", q=(0.7, lambda q: 0 < q <= 1, "in (0, 1]"))
def _gce(t, q):
    """Generalized cross-entropy (Zhang & Sabuncu 2018): ``(1 - p_y^q) / q``."""
    return (1.0 - tf.pow(_p_true(t) + _EPS, q)) / q


@register(
    "symmetric_ce",
    "classification",
    alpha=(0.1, _nonneg, ">= 0"),
    beta=(1.0, _nonneg, ">= 0"),
    log_zero=(-4.0, lambda a: a < 0, "< 0"),
)
def _symmetric_ce(t, alpha, beta, log_zero):
    """Wang et al. 2019: ``alpha CE + beta RCE``, RCE = ``-log_zero (1 - p_y)`` (log 0 := log_zero)."""
    return alpha * _ce(t) - beta * log_zero * (1.0 - _p_true(t))


@register("poly1", "classification", epsilon=(1.0, lambda e: e >= -1, ">= -1"))
def _poly1(t, epsilon):
    """Leng et al. 2022: ``CE + epsilon (1 - p_y)``."""
    return _ce(t) + epsilon * (1.0 - _p_true(t))


# --------------------------------------------------------------------------- #
# Regression (per-example mean over the last axis).
# --------------------------------------------------------------------------- #


def _err(t: Prepared) -> tf.Tensor:
    return t.scores - t.y


@register("mse", "regression")
def _mse(t):
    return tf.reduce_mean(tf.square(_err(t)), axis=-1)


@register("mae", "regression")
def _mae(t):
    return tf.reduce_mean(tf.abs(_err(t)), axis=-1)


@register("huber", "regression", delta=(1.0, _positive, "> 0"))
def _huber(t, delta):
    a = tf.abs(_err(t))
    quad = tf.minimum(a, delta)
    return tf.reduce_mean(0.5 * tf.square(quad) + delta * (a - quad), axis=-1)


@register("log_cosh", "regression")
def _log_cosh(t):
    e = _err(t)  # log(cosh(e)) = e + softplus(-2e) - log 2: no overflow for large |e|
    return tf.reduce_mean(e + tf.nn.softplus(-2.0 * e) - math.log(2.0), axis=-1)


@register("quantile", "regression", tau=(0.5, lambda q: 0 < q < 1, "in (0, 1)"))
def _quantile(t, tau):
    """Pinball loss: ``max(tau (y - f), (tau - 1)(y - f))``."""
    r = t.y - t.scores
    return tf.reduce_mean(tf.maximum(tau * r, (tau - 1.0) * r), axis=-1)


# --------------------------------------------------------------------------- #
# Boxes (regression on [..., 4]: corners x_min, y_min, x_max, y_max).
# --------------------------------------------------------------------------- #

_BOX_EPS = 1e-7  # keeps 0/0 (zero-area boxes, a point enclosing box) at 0


def _box_geometry(t: Prepared) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(IoU, enclosing box corners [..., 4], union)`` of predicted and target boxes ``[..., 4]``.

    A predicted box with ``x_max < x_min`` (or ``y_max < y_min``) has zero width
    (height), so a network's raw outputs give a finite loss; but an inverted box's
    area has no gradient, so predict valid boxes (a centre and a size, as
    ``slf_tf.models.CornersFromCentreSize`` does).
    """
    if t.scores.shape[-1] != 4:
        raise ValueError(
            f"Box losses take boxes [..., 4] as corners (x_min, y_min, x_max, y_max); got y_pred of shape "
            f"{t.scores.shape}."
        )
    p, y = t.scores, t.y

    def area(b):
        return tf.nn.relu(b[..., 2] - b[..., 0]) * tf.nn.relu(b[..., 3] - b[..., 1])

    low, high = tf.maximum(p[..., :2], y[..., :2]), tf.minimum(p[..., 2:], y[..., 2:])
    inter = tf.reduce_prod(tf.nn.relu(high - low), axis=-1)
    union = area(p) + area(y) - inter
    enclosing = tf.concat([tf.minimum(p[..., :2], y[..., :2]), tf.maximum(p[..., 2:], y[..., 2:])], axis=-1)
    return inter / (union + _BOX_EPS), enclosing, union


@register("iou", "regression")
def _iou(t):
    """``1 - IoU`` of boxes ``[..., 4]`` (corners x_min, y_min, x_max, y_max); 1 when they do not overlap."""
    return 1.0 - _box_geometry(t)[0]


@register("giou", "regression")
def _giou(t):
    """Rezatofighi et al. 2019: ``1 - IoU + (|C| - |A u B|) / |C|``, C the smallest enclosing box: in [0, 2],
    with a gradient that pulls apart boxes together."""
    iou, enclosing, union = _box_geometry(t)
    hull = tf.nn.relu(enclosing[..., 2] - enclosing[..., 0]) * tf.nn.relu(enclosing[..., 3] - enclosing[..., 1])
    return 1.0 - iou + (hull - union) / (hull + _BOX_EPS)


@register("diou", "regression")
def _diou(t):
    """Zheng et al. 2020: ``1 - IoU + rho^2 / c^2``, rho the distance of the centres, c the enclosing box's diagonal."""
    iou, enclosing, _ = _box_geometry(t)
    centres = 0.5 * (t.scores[..., :2] + t.scores[..., 2:]) - 0.5 * (t.y[..., :2] + t.y[..., 2:])
    diagonal = tf.reduce_sum(tf.square(enclosing[..., 2:] - enclosing[..., :2]), axis=-1)
    return 1.0 - iou + tf.reduce_sum(tf.square(centres), axis=-1) / (diagonal + _BOX_EPS)


# --------------------------------------------------------------------------- #
# Binary.
# --------------------------------------------------------------------------- #


def _bce_terms(t):
    return -(t.y * t.log_p + (1.0 - t.y) * t.log_1mp)


def _p_target(t: Prepared) -> tf.Tensor:
    """The probability the output gives the target: ``y p + (1 - y) (1 - p)`` (soft targets too)."""
    return t.y * t.p + (1.0 - t.y) * (1.0 - t.p)


@register("bce", "binary")
def _bce(t):
    return _bce_terms(t)


@register("focal_bce", "binary", gamma=(2.0, _nonneg, ">= 0"))
def _focal_bce(t, gamma):
    return tf.pow(tf.maximum(1.0 - _p_target(t), _EPS), gamma) * _bce_terms(t)


@register("binary_hinge", "binary")
def _binary_hinge(t):
    """``max(0, 1 - (2y - 1) s)`` on the score (logit, or probability - 0.5 when given probabilities)."""
    return tf.nn.relu(1.0 - (2.0 * t.y - 1.0) * t.scores)


@register("mae", "binary")
def _mae_binary(t):
    """``|y - p|`` on the probability: bounded, so robust to flipped targets (Ghosh et al. 2017).

    Keras' ``MeanAbsoluteError`` on ``sigmoid(logit)``; half the two-class ``mae`` of the classification task.
    """
    return tf.abs(t.y - t.p)


@register("gce", "binary", q=(0.7, lambda q: 0 < q <= 1, "in (0, 1]"))
def _gce_binary(t, q):
    """Generalized cross-entropy (Zhang & Sabuncu 2018) on a sigmoid output: ``(1 - p_t^q) / q``.

    Equal to the classification ``gce`` on the two logits ``[0, logit]``; ``q -> 0`` is ``bce``, ``q = 1`` is ``mae``.
    """
    return (1.0 - tf.pow(_p_target(t) + _EPS, q)) / q


# --------------------------------------------------------------------------- #
# Parsing, preparation and the public objects.
# --------------------------------------------------------------------------- #

_NAME_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)


def known(task: str = "classification") -> list[str]:
    """The candidate names registered for ``task``."""
    _check_task(task)
    return sorted(name for (t, name) in _REGISTRY if t == task)


def parse(spec: str, task: str = "classification") -> tuple[str, dict[str, float]]:
    """Parses ``"focal(gamma=2.0)"`` into ``("focal", {"gamma": 2.0})``, validating both parts."""
    _check_task(task)
    if not isinstance(spec, str):
        raise ValueError(f"A candidate loss is named by a string like 'focal(gamma=2.0)'; got {spec!r}.")
    m = _NAME_RE.match(spec)
    if not m:
        raise ValueError(f"Cannot parse loss {spec!r}; expected 'name' or 'name(key=value, ...)'.")
    name, arg_text = m.group(1), m.group(2)
    if (task, name) not in _REGISTRY:
        elsewhere = [t for t in TASKS if (t, name) in _REGISTRY]
        hint = f" {name!r} is a {' and '.join(elsewhere)} loss: pass task={elsewhere[0]!r}." if elsewhere else ""
        raise ValueError(f"Unknown {task} loss {name!r}; known: {known(task)}.{hint}")
    allowed = _REGISTRY[(task, name)].params
    params: dict[str, float] = {}
    if arg_text and arg_text.strip():
        try:
            call = ast.parse(f"f({arg_text})", mode="eval").body
        except SyntaxError as e:
            raise ValueError(f"Cannot parse the parameters of {spec!r}: {e.msg}.") from None
        if call.args:
            raise ValueError(f"Parameters of {spec!r} must be given as key=value; allowed: {sorted(allowed)}.")
        for kw in call.keywords:
            if kw.arg in params:
                raise ValueError(f"Parameter {kw.arg} is given twice in {spec!r}; give it once.")
            if kw.arg not in allowed:
                raise ValueError(f"Loss {name!r} has no parameter {kw.arg!r}; allowed: {sorted(allowed) or 'none'}.")
            try:
                value = ast.literal_eval(kw.value)
            except ValueError:
                raise ValueError(f"Parameter {kw.arg} of {spec!r} must be a number.") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"Parameter {kw.arg} of {spec!r} must be a number; got {value!r}.")
            params[kw.arg] = float(value)
    for key, (default, valid, rule) in allowed.items():
        params.setdefault(key, default)
        if not (math.isfinite(params[key]) and valid(params[key])):
            raise ValueError(f"Parameter {key} of loss {name!r} must be {rule}; got {params[key]!r} in {spec!r}.")
    return name, params


def _static_rank(t: tf.Tensor, what: str) -> int:
    if t.shape.rank is None:
        raise ValueError(f"{what} must have a known rank; got shape {t.shape}.")
    return t.shape.rank


_WARNED_PROBABILITIES: set[str] = set()


def _warn_if_probabilities(y_pred: Any, task: str, from_logits: bool) -> None:
    """Warns once if ``from_logits=True`` meets an output a softmax/sigmoid produced (as Keras' losses do)."""
    op_type = getattr(getattr(y_pred, "op", None), "type", None) if not tf.executing_eagerly() else None
    produced = "Sigmoid" if task == "binary" else "Softmax"
    if from_logits and (hasattr(y_pred, "_keras_logits") or op_type == produced) and task not in _WARNED_PROBABILITIES:
        _WARNED_PROBABILITIES.add(task)
        warnings.warn(
            f"The candidate losses got from_logits=True, but y_pred was produced by a {produced} and so holds "
            "probabilities, not logits. Remove the model's final activation, or pass from_logits=False.",
            stacklevel=4,
        )


def _assert(ok: tf.Tensor, message: str, *data: tf.Tensor) -> tf.Operation:
    """A run-time check (ignored under XLA, which drops Assert ops) that raises ``message`` with ``data``."""
    return tf.debugging.Assert(ok, [message, *data], summarize=8)


def validate_targets(y_true: tf.Tensor, task: str, num_classes: Any = None, one_hot: bool = False) -> tf.Tensor:
    """``y_true`` with a run-time check that the labels can be what the task says.

    Classification: integer class ids in ``[0, num_classes)`` (finite, whole), or
    one-hot/soft rows that are non-negative and sum to 1. Binary: targets in [0, 1].
    Regression: finite targets. A bad batch raises ``InvalidArgumentError`` naming
    the rule and the offending range, instead of training on a silently wrong loss.
    """
    y = tf.cast(y_true, tf.float32)
    finite = tf.reduce_all(tf.math.is_finite(y))
    if task == "classification" and one_hot:
        sums = tf.reduce_sum(y, axis=-1)
        ok = finite & tf.reduce_all(y >= 0) & tf.reduce_all(tf.abs(sums - 1.0) <= 1e-3)
        check = _assert(ok, "One-hot/soft labels must be non-negative rows summing to 1; got min value, row sums:",
                        tf.reduce_min(y), sums)  # fmt: skip
    elif task == "classification":
        c = tf.cast(num_classes, tf.float32)
        ok = finite & tf.reduce_all(tf.equal(y, tf.round(y))) & tf.reduce_all(y >= 0) & tf.reduce_all(y < c)
        check = _assert(ok, "Labels must be whole class ids in [0, num_classes); got num_classes, labels:", c, y)
    elif task == "binary":
        ok = finite & tf.reduce_all(y >= 0) & tf.reduce_all(y <= 1)
        check = _assert(ok, "Binary targets must lie in [0, 1]; got:", y)
    else:
        check = _assert(finite, "Regression targets must be finite; got:", y)
    with tf.control_dependencies([check]):
        return tf.identity(y_true)


def prepare(y_true: Any, y_pred: Any, task: str, from_logits: bool) -> Prepared:
    """Validates shapes, dtypes and label values and computes what the task's candidates share."""
    _warn_if_probabilities(y_pred, task, from_logits)
    y_pred = tf.convert_to_tensor(y_pred)
    y_true = tf.convert_to_tensor(y_true)
    if not y_pred.dtype.is_floating:
        raise ValueError(f"y_pred must be floating point; got dtype {y_pred.dtype.name}.")
    dtype = tf.float32 if y_pred.dtype in (tf.float16, tf.bfloat16) else y_pred.dtype
    y_pred = tf.cast(y_pred, dtype)
    if not (y_true.dtype.is_floating or y_true.dtype.is_integer or y_true.dtype == tf.bool):
        raise ValueError(f"y_true must be numeric; got dtype {y_true.dtype.name}.")
    rp, rt = _static_rank(y_pred, "y_pred"), _static_rank(y_true, "y_true")
    if task == "classification":
        return _prepare_classification(y_true, y_pred, rp, rt, dtype, from_logits)
    if task == "regression":
        if rp == 1:
            y_pred = y_pred[:, None]
        if y_true.shape.rank == 1:
            y_true = y_true[:, None]
        if y_true.shape.rank == y_pred.shape.rank - 1 and y_pred.shape[-1] == 1:
            y_true = y_true[..., None]  # [batch, P] targets of [batch, P, 1] predictions (as Keras squeezes)
        if y_true.shape.rank != y_pred.shape.rank or not y_true.shape[1:].is_compatible_with(y_pred.shape[1:]):
            raise ValueError(
                f"regression y_true shape {y_true.shape} does not match y_pred shape {y_pred.shape}; both must be "
                "[batch] or [batch, d1..dk, d] (targets may leave out a last axis of size 1)."
            )
        y = tf.cast(validate_targets(y_true, task), dtype)
        return Prepared(y, y_pred, None, None, None)
    # binary: one output per position; a last axis of size 1 is the output, not a position
    if rp >= 2 and y_pred.shape[-1] == 1:
        y_pred = y_pred[..., 0]
    if rt >= 2 and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    if y_pred.shape.rank != y_true.shape.rank or not y_true.shape[1:].is_compatible_with(y_pred.shape[1:]):
        raise ValueError(
            f"binary y_pred and y_true must be [batch] or [batch, 1], or [batch, d1..dk] (or [batch, d1..dk, 1]) "
            f"of one shape; got {y_pred.shape} and {y_true.shape}."
        )
    y = tf.cast(validate_targets(y_true, task), dtype)
    if from_logits:
        return Prepared(y, y_pred, tf.math.log_sigmoid(y_pred), tf.sigmoid(y_pred), tf.math.log_sigmoid(-y_pred))
    p = tf.clip_by_value(y_pred, _EPS, 1.0 - _EPS)
    return Prepared(y, y_pred - 0.5, tf.math.log(p), y_pred, tf.math.log(1.0 - p))


def _prepare_classification(y_true, y_pred, rp: int, rt: int, dtype, from_logits: bool) -> Prepared:
    """``y_pred [batch, P, C]``; labels ``[batch, P]`` / ``[batch, P, 1]``, or one-hot ``[batch, P, C]``."""
    if rp < 2:
        raise ValueError(
            f"classification y_pred must be [batch, classes] (or [batch, d1..dk, classes]); got shape {y_pred.shape}."
        )
    num_classes, positions = y_pred.shape[-1], y_pred.shape[:-1]
    one_hot = rt == rp and y_true.shape[-1] == num_classes and num_classes != 1
    labels = rt == rp - 1 or (rt == rp and y_true.shape[-1] == 1)
    if not (one_hot or labels) or not y_true.shape[: rp - 1].is_compatible_with(positions):
        dims = "".join(f", {d}" for d in positions[1:].as_list())
        raise ValueError(
            f"classification y_true must be integer labels [batch{dims}] or [batch{dims}, 1], or one-hot "
            f"[batch{dims}, {num_classes}]; got shape {y_true.shape} for y_pred of shape {y_pred.shape}."
        )
    if one_hot:
        y = tf.cast(validate_targets(y_true, "classification", one_hot=True), dtype)  # one-hot (or soft) labels
    else:
        shape = [-1] if rp == 2 else tf.shape(y_pred)[:-1]
        ids = validate_targets(tf.reshape(y_true, shape), "classification", tf.shape(y_pred)[-1])
        y = tf.one_hot(tf.cast(ids, tf.int32), tf.shape(y_pred)[-1], dtype=dtype)
    if from_logits:
        log_p = tf.nn.log_softmax(y_pred, axis=-1)
        return Prepared(y, y_pred, log_p, tf.exp(log_p), None)
    p = y_pred
    return Prepared(y, p, tf.math.log(tf.clip_by_value(p, _EPS, 1.0)), p, None)


def keras_mask(y_pred: Any) -> tf.Tensor | None:
    """The Keras mask a model attached to its output (``Embedding(mask_zero=True)`` and the layers after it)."""
    return getattr(y_pred, "_keras_mask", None)


def _sample_weight(sample_weight: Any, losses: tf.Tensor) -> tf.Tensor:
    """``sample_weight`` as a weight per position of ``losses [batch, P]`` (broadcastable); non-finite -> 0."""
    w = tf.convert_to_tensor(sample_weight)
    given, rank = w.shape, losses.shape.rank
    if w.shape.rank == rank + 1 and w.shape[-1] == 1:
        w = w[..., 0]  # [batch, 1] of [batch] losses, [batch, P, 1] of [batch, P] losses
    if w.shape.rank == 1 and rank > 1:
        w = tf.reshape(w, [-1] + [1] * (rank - 1))  # one weight per example, for all its positions
    ok = w.shape.rank == rank and all(
        a is None or b is None or a == b or (i > 0 and a == 1)
        for i, (a, b) in enumerate(zip(w.shape, losses.shape, strict=True))
    )
    if not ok:
        per_position = f", or one per position, shape {losses.shape.as_list()}" if rank > 1 else ""
        raise ValueError(
            f"sample_weight must hold one weight per example, shape [batch] or [batch, 1]{per_position} (batch "
            f"{losses.shape[0]}); got shape {given}."
        )
    batch, weights = tf.shape(losses)[0], tf.shape(w)[0]
    check = tf.debugging.Assert(
        tf.equal(weights, batch),
        ["sample_weight must hold one weight per example; got, for a batch of", batch, "weights:", weights],
    )
    with tf.control_dependencies([check]):
        w = tf.cast(w, losses.dtype)
        return tf.where(tf.math.is_finite(w), w, tf.zeros_like(w))


def position_weights(losses: tf.Tensor, sample_weight: Any = None, mask: Any = None) -> tf.Tensor | None:
    """Keras' weight of each value of ``losses [batch, P]``: None when there are neither weights nor a mask.

    ``sample_weight``: one per example (``[batch]``, ``[batch, 1]``) or per position
    (``[batch, P]``); a non-finite weight becomes 0, dropping its example instead of
    turning the loss NaN. ``mask`` (Keras', ``[batch, P]``) is scaled by positions /
    valid positions, as Keras' ``sum_over_batch_size`` scales it: the mean of the
    weighted values is then the mean over the batch's valid positions.
    """
    weights = None if sample_weight is None else _sample_weight(sample_weight, losses)
    if mask is None:
        return weights
    m = tf.cast(mask, losses.dtype)
    if m.shape.rank != losses.shape.rank:
        raise ValueError(
            f"The Keras mask of y_pred has shape {mask.shape}, but the losses have one value per position, shape "
            f"{losses.shape}: a mask must mark the positions of y_pred (all but its class or output axis)."
        )
    m *= tf.math.divide_no_nan(tf.cast(tf.size(m), m.dtype), tf.reduce_sum(m))
    return m if weights is None else weights * m


def reduce_positions(losses: tf.Tensor, weights: tf.Tensor | None = None, stacked: bool = False) -> tf.Tensor:
    """Each example's mean over positions of ``weights * losses``: ``[batch, P] -> [batch]``.

    ``stacked``: ``losses`` is ``[batch, P, N]`` (N candidates) and ``weights``
    ``[batch, P]``; the result is ``[batch, N]``. With no positions this is the
    weighted losses themselves.
    """
    if weights is not None:
        losses = losses * (weights[..., None] if stacked else weights)
    axes = list(range(1, losses.shape.rank - (1 if stacked else 0)))
    return tf.reduce_mean(losses, axis=axes) if axes else losses


def _check_batch(y_true: tf.Tensor, y_pred: tf.Tensor) -> None:
    bt, bp = y_true.shape[:1], y_pred.shape[:1]
    if bt[0] is not None and bp[0] is not None and bt[0] != bp[0]:
        raise ValueError(f"y_true and y_pred batch sizes differ: {y_true.shape} vs {y_pred.shape}.")


class CandidateLoss:
    """One named, parameterised per-example loss: ``(y_true, y_pred, sample_weight=None) -> [batch]``."""

    def __init__(self, spec: str, task: str = "classification", from_logits: bool = True):
        self.spec = spec
        self.name, self.params = parse(spec, task)
        self.task = task
        self.from_logits = bool(from_logits)
        self._fn = _REGISTRY[(task, self.name)].fn

    def from_prepared(self, prepared: Prepared) -> tf.Tensor:
        return self._fn(prepared, **self.params)

    def per_position(self, y_true: Any, y_pred: Any) -> tf.Tensor:
        """The loss at every position, ``[batch, P]`` (``[batch]`` without positions)."""
        y_true, y_pred = tf.convert_to_tensor(y_true), tf.convert_to_tensor(y_pred)
        _check_batch(y_true, y_pred)
        return self.from_prepared(prepare(y_true, y_pred, self.task, self.from_logits))

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None, mask: Any = None) -> tf.Tensor:
        """Per-example losses ``[batch]``: the mean over positions, weighted as Keras weighs them
        (:func:`position_weights`; ``mask`` defaults to the Keras mask of ``y_pred``)."""
        mask = keras_mask(y_pred) if mask is None else mask
        values = self.per_position(y_true, y_pred)
        return reduce_positions(values, position_weights(values, sample_weight, mask))

    def __repr__(self) -> str:
        return f"CandidateLoss({self.spec!r}, task={self.task!r})"


def candidate_tag(spec: str) -> str:
    """A candidate's TensorBoard- and log-safe name: ``focal(gamma=2.0)`` -> ``focal_gamma_2.0``.

    ``-`` is kept and ``+`` dropped, so ``1e-3`` and ``1e+3`` stay apart (``focal_gamma_1e-3``, ``focal_gamma_1e3``).
    """
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_.\-]", "_", spec.replace("+", ""))).strip("_")


def get(spec: str, task: str = "classification", from_logits: bool = True) -> CandidateLoss:
    """The candidate loss named by ``spec`` (e.g. ``"focal(gamma=2.0)"``)."""
    return CandidateLoss(spec, task=task, from_logits=from_logits)


class LossBag:
    """N candidate losses evaluated together: ``bag(y_true, y_pred) -> [batch, N]``."""

    def __init__(self, specs: Sequence[str], task: str = "classification", from_logits: bool = True):
        if isinstance(specs, str):
            raise ValueError(f"losses must be a list of names, not the single string {specs!r}.")
        specs = list(specs)
        if not specs:
            raise ValueError(f"The bag of losses is empty; give at least one of {known(task)}.")
        self.candidates = [CandidateLoss(s, task, from_logits) for s in specs]
        keys = [(c.name, tuple(sorted(c.params.items()))) for c in self.candidates]
        dupes = sorted({specs[i] for i, k in enumerate(keys) if keys.index(k) != i})
        if dupes:
            raise ValueError(f"Duplicate losses in the bag: {dupes}; each candidate must appear once.")
        self.specs, self.task, self.from_logits = specs, task, bool(from_logits)

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def __len__(self) -> int:
        return len(self.candidates)

    def __call__(
        self, y_true: Any, y_pred: Any, sample_weight: Any = None, mask: Any = None, transition: Any = None
    ) -> tf.Tensor:
        """Per-example losses ``[batch, N]``: weighted means over positions, as :meth:`CandidateLoss.__call__`.

        ``transition``: the ``[C, C]`` noise matrix of a ``forward`` candidate.
        """
        mask = keras_mask(y_pred) if mask is None else mask
        y_true, y_pred = tf.convert_to_tensor(y_true), tf.convert_to_tensor(y_pred)
        _check_batch(y_true, y_pred)
        prepared = prepare(y_true, y_pred, self.task, self.from_logits)
        if transition is not None:
            prepared = prepared._replace(transition=tf.convert_to_tensor(transition))
        values = tf.stack([c.from_prepared(prepared) for c in self.candidates], axis=-1)  # [batch, P, N]
        if sample_weight is None and mask is None:
            return reduce_positions(values, stacked=True)
        weights = position_weights(values[..., 0], sample_weight, mask)
        return reduce_positions(values, weights, stacked=True)
