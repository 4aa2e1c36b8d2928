"""Gradient estimators for discrete (categorical) samples, behind one API.

Every estimator has the same two methods::

    est = slf_tf.estimators.get("straight_through", temperature=0.5)
    d = est.sample(logits, seed)              # [..., N]: what the forward pass uses
    cost = f(d)                                # per-sample cost, shape [...]
    loss = est.surrogate(cost, logits, d)      # same value as cost; its gradient
                                               # wrt logits is the estimator's
    grads = tape.gradient(tf.reduce_mean(loss), [logits, ...])

* ``gumbel_softmax`` (alias ``relaxed``): relaxed sample, pathwise gradient
  (biased for tau > 0, low variance).
* ``straight_through``: one-hot forward, the Gumbel-Softmax gradient backward.
* ``score_function`` (alias ``reinforce``): exact one-hot draw; unbiased
  gradient ``(f - b) * grad log p(d)`` with a moving-average or leave-one-out
  baseline ``b``.
* ``ils``: Intermediate Loss Sampling: exact one-hot draw forward; backward, the
  target ``pi_D = proj_simplex(d - c * dL/dd)`` and the gradient of
  ``KL(pi_D || softmax(logits))`` wrt the logits, i.e. ``softmax(logits) - pi_D``.
  ``variant="reference"`` reproduces the original public code instead: the
  upstream gradient is centred on the drawn entry, the step is renormalised by
  its sum rather than projected, and ``-pi_D / (pi + 1e-7)`` is returned as the
  gradient of the logits.

For pathwise estimators ``surrogate`` is the identity; it exists so that training
code need not know which estimator it holds.
"""

from __future__ import annotations

import abc
from typing import Any

import tensorflow as tf

from slf_tf import checks, gumbel

__all__ = [
    "Estimator",
    "GumbelSoftmaxEstimator",
    "StraightThroughEstimator",
    "ScoreFunctionEstimator",
    "IntermediateLossEstimator",
    "binary_gate",
    "categorical_log_prob",
    "get",
    "ils_sample",
    "leave_one_out_baseline",
    "project_to_simplex",
    "score_function_surrogate",
]


# --------------------------------------------------------------------------- #
# Building blocks.
# --------------------------------------------------------------------------- #


def binary_gate(s: tf.Tensor, threshold: float = 0.5, clip: float | None = None) -> tf.Tensor:
    """The B() gate: forward ``1[s >= threshold]``; backward straight-through.

    Args:
      s: soft counts (any shape, float).
      threshold: the gate's threshold theta.
      clip: if set, the gradient passes only where ``|s - threshold| <= clip``
        (zero elsewhere), like a hard-tanh straight-through estimator; None
        passes it everywhere (identity).

    Returns:
      A tensor like ``s`` with values exactly 0 or 1.
    """
    s = tf.convert_to_tensor(s)
    hard = tf.cast(s >= threshold, s.dtype)
    if clip is None:
        soft = s
    else:
        mask = tf.cast(tf.abs(s - threshold) <= clip, s.dtype)
        soft = s * mask  # gradient mask * upstream; forward value cancels below
    return hard + (soft - tf.stop_gradient(soft))


def categorical_log_prob(logits: tf.Tensor, one_hot: tf.Tensor) -> tf.Tensor:
    """``log p(d)`` of a one-hot ``d`` under ``Categorical(logits)``, shape ``[...]``."""
    return tf.reduce_sum(tf.stop_gradient(one_hot) * tf.nn.log_softmax(logits, axis=-1), axis=-1)


def score_function_surrogate(cost: tf.Tensor, log_prob: tf.Tensor, baseline: Any = 0.0) -> tf.Tensor:
    """``cost + stop(cost - b) * (log_prob - stop(log_prob))``.

    Its value equals ``cost``; its gradient is ``grad cost + (cost - b) grad log_prob``
    (the REINFORCE / likelihood-ratio estimator with baseline ``b``).
    """
    advantage = tf.stop_gradient(cost - baseline)
    return cost + advantage * (log_prob - tf.stop_gradient(log_prob))


def leave_one_out_baseline(costs: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """For K draws along ``axis``, the mean cost of the other K-1 draws (K >= 2)."""
    costs = tf.convert_to_tensor(costs)
    k = costs.shape[axis]
    if k is not None and k < 2:
        raise ValueError(f"leave-one-out baseline needs at least 2 draws along axis {axis}; got {k}.")
    k = tf.cast(tf.shape(costs)[axis], costs.dtype)
    total = tf.reduce_sum(costs, axis=axis, keepdims=True)
    return tf.stop_gradient((total - costs) / (k - 1.0))


def project_to_simplex(v: tf.Tensor) -> tf.Tensor:
    """Euclidean projection of each row of ``v`` ``[..., N]`` onto the probability simplex.

    The sort-based algorithm of Held et al. (1974) / Duchi et al. (2008):
    ``x = max(v - theta, 0)`` with ``theta`` chosen so that ``sum(x) = 1``.
    """
    v = tf.convert_to_tensor(v)
    n = tf.shape(v)[-1]
    u = tf.sort(v, axis=-1, direction="DESCENDING")
    css = tf.cumsum(u, axis=-1) - 1.0
    ind = tf.cast(tf.range(1, n + 1), v.dtype)
    cond = tf.cast(u - css / ind > 0, v.dtype)
    rho = tf.reduce_sum(cond, axis=-1, keepdims=True)  # >= 1 always (first entry passes)
    theta = tf.gather(css, tf.cast(rho, tf.int32) - 1, axis=-1, batch_dims=v.shape.rank - 1) / rho
    return tf.maximum(v - theta, 0.0)


def ils_sample(
    logits: Any,
    step_size: float = 0.1,
    seed: checks.Seed = None,
    variant: str = "corrected",
    loss_scale: float = 1.0,
) -> tf.Tensor:
    """An exact one-hot categorical draw with the Intermediate Loss Sampling gradient.

    Args:
      logits: ``[..., N]``.
      step_size: c, the size of the SGD step from the draw that forms ``pi_D``.
      seed: stateless seed.
      variant: ``"corrected"`` (the method as described: gradient of
        ``KL(pi_D || softmax(logits))`` wrt logits = ``softmax(logits) - pi_D``,
        with ``pi_D`` projected onto the simplex) or ``"reference"`` (the public
        code's rule, see the module docstring).
      loss_scale: how much smaller the upstream gradient is than each draw's own
        loss gradient, e.g. the batch size when the objective is a batch mean.
        The step from the draw uses ``loss_scale * dy`` and the returned gradient
        is divided by ``loss_scale``. ILS's gradient ``softmax - pi_D`` is O(1)
        whatever the loss scale, so without this a batch-mean objective shrinks
        the step ``c * dy`` by the batch size (``pi_D`` stays at the draw, and the
        logits learn to repeat their own draws) while the ILS gradient outweighs
        every other gradient of the batch mean by the batch size.

    Returns:
      ``[..., N]`` one-hot in the dtype of ``logits``.
    """
    if variant not in ("corrected", "reference"):
        raise ValueError(f'variant must be "corrected" or "reference"; got {variant!r}.')
    checks.check_temperature(step_size, name="step_size")
    checks.check_temperature(loss_scale, name="loss_scale")
    logits = checks.check_logits(logits)
    draw = gumbel.gumbel_max(tf.stop_gradient(logits), seed)

    @tf.custom_gradient
    def _draw(z):
        def grad(dy):
            dtype = checks.compute_dtype(z.dtype)
            d, pi = tf.cast(draw, dtype), tf.nn.softmax(tf.cast(z, dtype), axis=-1)
            dy = tf.cast(dy, dtype) * loss_scale
            if variant == "corrected":
                pi_d = project_to_simplex(d - step_size * dy)
                g = pi - pi_d
            else:
                dy = dy - tf.reduce_sum(dy * d, axis=-1, keepdims=True)
                new = d - step_size * dy
                new = new / tf.reduce_sum(new, axis=-1, keepdims=True)
                g = -new / (pi + 1e-7)
            return tf.cast(g / loss_scale, z.dtype)

        return tf.identity(draw), grad

    return _draw(logits)


# --------------------------------------------------------------------------- #
# The estimator API.
# --------------------------------------------------------------------------- #


class Estimator(tf.Module, abc.ABC):
    """A way to draw ``[..., N]`` categorical samples and differentiate through them."""

    name: str = "estimator"

    @abc.abstractmethod
    def sample(self, logits: tf.Tensor, seed: checks.Seed = None) -> tf.Tensor:
        """Returns the sample used in the forward pass, ``[..., N]``."""

    def surrogate(self, cost: tf.Tensor, logits: tf.Tensor, sample: tf.Tensor) -> tf.Tensor:
        """A tensor equal to ``cost`` whose gradient is this estimator's gradient."""
        del logits, sample
        return cost

    def get_config(self) -> dict[str, Any]:
        return {}


class GumbelSoftmaxEstimator(Estimator):
    """Relaxed Gumbel-Softmax sample with its pathwise gradient."""

    name = "gumbel_softmax"

    def __init__(self, temperature: float = 1.0):
        super().__init__(name=self.name)
        checks.check_temperature(temperature)
        self.temperature = temperature

    def sample(self, logits, seed=None):
        return gumbel.gumbel_softmax(logits, self.temperature, hard=False, seed=seed)

    def get_config(self):
        return {"temperature": self.temperature}


class StraightThroughEstimator(GumbelSoftmaxEstimator):
    """Straight-through Gumbel-Softmax: one-hot forward, relaxed gradient."""

    name = "straight_through"

    def sample(self, logits, seed=None):
        return gumbel.gumbel_softmax(logits, self.temperature, hard=True, seed=seed)


class ScoreFunctionEstimator(Estimator):
    """REINFORCE with a baseline.

    Args:
      baseline: ``"moving_average"`` (exponential moving average of the mean
        cost, updated after use, so the current sample never enters its own
        baseline), ``"leave_one_out"`` (costs must carry K >= 2 draws on axis 0;
        each draw's baseline is the mean of the others), or ``"none"``.
      decay: the moving average's decay.
    """

    name = "score_function"
    BASELINES = ("moving_average", "leave_one_out", "none")

    def __init__(self, baseline: str = "moving_average", decay: float = 0.9):
        super().__init__(name=self.name)
        if baseline not in self.BASELINES:
            raise ValueError(f"baseline must be one of {self.BASELINES}; got {baseline!r}.")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1); got {decay!r}.")
        self.baseline_kind = baseline
        self.decay = decay
        self.moving_average = tf.Variable(0.0, trainable=False, name="baseline")
        self._initialized = tf.Variable(False, trainable=False, name="baseline_initialized")

    def sample(self, logits, seed=None):
        return tf.stop_gradient(gumbel.gumbel_max(logits, seed))

    def surrogate(self, cost, logits, sample):
        log_prob = categorical_log_prob(logits, sample)
        if self.baseline_kind == "none":
            baseline = tf.zeros_like(cost)
        elif self.baseline_kind == "leave_one_out":
            baseline = leave_one_out_baseline(cost, axis=0)
        else:
            mean_cost = tf.cast(tf.reduce_mean(tf.stop_gradient(cost)), tf.float32)
            # 0 on first use: the current costs never enter their own baseline.
            baseline = tf.cast(tf.where(self._initialized, self.moving_average, 0.0), cost.dtype)
            new_value = tf.where(
                self._initialized,
                self.decay * self.moving_average + (1.0 - self.decay) * mean_cost,
                mean_cost,
            )
            with tf.control_dependencies([baseline]):
                update = tf.group(self.moving_average.assign(new_value), self._initialized.assign(True))
            with tf.control_dependencies([update]):
                baseline = tf.identity(baseline)
        return score_function_surrogate(cost, log_prob, baseline)

    def get_config(self):
        return {"baseline": self.baseline_kind, "decay": self.decay}


class IntermediateLossEstimator(Estimator):
    """Intermediate Loss Sampling (see :func:`ils_sample`)."""

    name = "ils"

    def __init__(self, step_size: float = 0.1, variant: str = "corrected", loss_scale: float = 1.0):
        super().__init__(name=self.name)
        checks.check_temperature(step_size, name="step_size")
        checks.check_temperature(loss_scale, name="loss_scale")
        if variant not in ("corrected", "reference"):
            raise ValueError(f'variant must be "corrected" or "reference"; got {variant!r}.')
        self.step_size = step_size
        self.variant = variant
        self.loss_scale = loss_scale

    def sample(self, logits, seed=None):
        return ils_sample(logits, self.step_size, seed=seed, variant=self.variant, loss_scale=self.loss_scale)

    def get_config(self):
        return {"step_size": self.step_size, "variant": self.variant, "loss_scale": self.loss_scale}


_REGISTRY: dict[str, type[Estimator]] = {
    "gumbel_softmax": GumbelSoftmaxEstimator,
    "relaxed": GumbelSoftmaxEstimator,
    "straight_through": StraightThroughEstimator,
    "score_function": ScoreFunctionEstimator,
    "reinforce": ScoreFunctionEstimator,
    "ils": IntermediateLossEstimator,
}


def get(name: str, **kwargs: Any) -> Estimator:
    """Creates an estimator by name; unknown names raise ``ValueError`` listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown estimator {name!r}; known: {sorted(_REGISTRY)}.")
    return _REGISTRY[name](**kwargs)
