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
import tensorflow_probability as tfp

from slf_tf import checks, gumbel, rng

tfd = tfp.distributions

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


def binary_gate(s: tf.Tensor, threshold: float = 0.5, clip: float | None = None, keep_top: bool = False) -> tf.Tensor:
    """The B() gate: forward ``1[s >= threshold]``; backward straight-through.

    Args:
      s: soft counts (any shape, float).
      threshold: the gate's threshold theta.
      clip: if set, the gradient passes only where ``|s - threshold| <= clip``
        (zero elsewhere), like a hard-tanh straight-through estimator; None
        passes it everywhere (identity).
      keep_top: also open the gate of the largest entry along the last axis, so
        that at least one entry is always selected (what SLF's selection uses).

    Returns:
      A tensor like ``s`` with values exactly 0 or 1.
    """
    s = tf.convert_to_tensor(s)
    hard = tf.cast(s >= threshold, s.dtype)
    if keep_top:
        hard = tf.maximum(hard, tf.one_hot(tf.argmax(s, axis=-1), tf.shape(s)[-1], dtype=s.dtype))
    if clip is None:
        soft = s
    else:
        mask = tf.cast(tf.abs(s - threshold) <= clip, s.dtype)
        soft = s * mask  # gradient mask * upstream; forward value cancels below
    return hard + (soft - tf.stop_gradient(soft))


def categorical_log_prob(logits: tf.Tensor, one_hot: tf.Tensor) -> tf.Tensor:
    """``log p(d)`` of a one-hot ``d`` under ``Categorical(logits)``, shape ``[...]`` (TFP's ``OneHotCategorical``)."""
    logits = tf.convert_to_tensor(logits)
    return tfd.OneHotCategorical(logits=logits, dtype=logits.dtype).log_prob(tf.stop_gradient(one_hot))


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
    logits = checks.check_logits(logits)
    return with_ils_gradient(logits, gumbel.gumbel_max(tf.stop_gradient(logits), seed), step_size, variant, loss_scale)


def with_ils_gradient(
    logits: tf.Tensor, draw: tf.Tensor, step_size: float = 0.1, variant: str = "corrected", loss_scale: float = 1.0
) -> tf.Tensor:
    """``draw`` (one-hot ``[..., N]``, drawn from ``logits``) carrying the ILS gradient into ``logits``.

    :func:`ils_sample` is this applied to a Gumbel-Max draw; SLF's selection
    applies it to draws from TFP's ``OneHotCategorical``.
    """
    if variant not in ("corrected", "reference"):
        raise ValueError(f'variant must be "corrected" or "reference"; got {variant!r}.')
    checks.check_positive(step_size, name="step_size")
    checks.check_positive(loss_scale, name="loss_scale")
    draw = tf.stop_gradient(tf.cast(draw, logits.dtype))

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
    """A way to draw ``[..., N]`` categorical samples and differentiate through them.

    Two ways to sample: :meth:`sample`, the toolkit's fast kernels (one draw per
    row of ``logits``), and :meth:`draw`, ``k`` draws per row from the TFP
    distribution :meth:`distribution` (what SLF's selection uses, so that its
    draws, log-probabilities and entropy are TFP's). Both carry this estimator's
    gradient and follow the same distribution (tested).
    """

    name: str = "estimator"

    #: True when the gradient flows through the sample itself (no surrogate needed).
    pathwise: bool = True

    @abc.abstractmethod
    def sample(self, logits: tf.Tensor, seed: checks.Seed = None, temperature: Any = None) -> tf.Tensor:
        """Returns the sample used in the forward pass, ``[..., N]``.

        ``temperature`` overrides the estimator's own for this call (e.g. a
        schedule's value at this step); estimators without one ignore it.
        """

    @abc.abstractmethod
    def distribution(self, logits: tf.Tensor, temperature: Any = None) -> tfd.Distribution:
        """The TFP distribution of this estimator's forward samples (before straight-through rounding)."""

    def draw(self, logits: tf.Tensor, k: int, seed: checks.Seed, temperature: Any = None) -> tf.Tensor:
        """``k`` draws ``[k, ..., N]`` from :meth:`distribution`, carrying this estimator's gradient."""
        return self.distribution(logits, temperature).sample(k, seed=tfp_seed(seed))

    def surrogate(self, cost: tf.Tensor, logits: tf.Tensor, sample: tf.Tensor) -> tf.Tensor:
        """A tensor equal to ``cost`` whose gradient is this estimator's gradient."""
        del logits, sample
        return cost

    def get_config(self) -> dict[str, Any]:
        return {}


def tfp_seed(seed: checks.Seed) -> tf.Tensor:
    """A stateless seed as TFP wants it: int32 ``[2]`` (int64 seeds wrap, deterministically)."""
    return tf.cast(rng.as_seed(seed), tf.int32)


class GumbelSoftmaxEstimator(Estimator):
    """Relaxed Gumbel-Softmax sample with its pathwise gradient."""

    name = "gumbel_softmax"

    def __init__(self, temperature: float = 1.0):
        super().__init__(name=self.name)
        checks.check_positive(temperature, name="temperature")
        self.temperature = temperature

    def _tau(self, temperature: Any) -> Any:
        return self.temperature if temperature is None else temperature

    def sample(self, logits, seed=None, temperature=None):
        return gumbel.gumbel_softmax(logits, self._tau(temperature), hard=False, seed=seed)

    def distribution(self, logits, temperature=None):
        logits = tf.convert_to_tensor(logits)
        return tfd.RelaxedOneHotCategorical(tf.cast(self._tau(temperature), logits.dtype), logits=logits)

    def get_config(self):
        return {"temperature": self.temperature}


class StraightThroughEstimator(GumbelSoftmaxEstimator):
    """Straight-through Gumbel-Softmax: one-hot forward, relaxed gradient."""

    name = "straight_through"

    def sample(self, logits, seed=None, temperature=None):
        return gumbel.gumbel_softmax(logits, self._tau(temperature), hard=True, seed=seed)

    def draw(self, logits, k, seed, temperature=None):
        return gumbel.straight_through(super().draw(logits, k, seed, temperature))


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
    pathwise = False
    BASELINES = ("moving_average", "leave_one_out", "none")

    def __init__(self, baseline: str = "moving_average", decay: float = 0.9):
        super().__init__(name=self.name)
        if baseline not in self.BASELINES:
            raise ValueError(f"baseline must be one of {self.BASELINES}; got {baseline!r}.")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1); got {decay!r}.")
        self.baseline_kind = baseline
        self.decay = decay
        # On-read, first-replica: under a tf.distribute strategy each replica updates its own
        # copy from the same (all-reduced) costs, with no synchronisation in the step.
        on_read = {
            "synchronization": tf.VariableSynchronization.ON_READ,
            "aggregation": tf.VariableAggregation.ONLY_FIRST_REPLICA,
        }
        self.moving_average = tf.Variable(0.0, trainable=False, name="baseline", **on_read)
        self._initialized = tf.Variable(False, trainable=False, name="baseline_initialized", **on_read)

    def sample(self, logits, seed=None, temperature=None):
        return tf.stop_gradient(gumbel.gumbel_max(logits, seed))

    def distribution(self, logits, temperature=None):
        logits = tf.convert_to_tensor(logits)
        return tfd.OneHotCategorical(logits=logits, dtype=logits.dtype)

    def draw(self, logits, k, seed, temperature=None):
        return tf.stop_gradient(super().draw(logits, k, seed, temperature))

    def surrogate(self, cost, logits, sample):
        """``cost [...]``; a sample of several independent categoricals (``[..., L, N]``) adds their log-probs."""
        log_prob = categorical_log_prob(logits, sample)
        while log_prob.shape.rank > tf.convert_to_tensor(cost).shape.rank:
            log_prob = tf.reduce_sum(log_prob, axis=-1)
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
        checks.check_positive(step_size, name="step_size")
        checks.check_positive(loss_scale, name="loss_scale")
        if variant not in ("corrected", "reference"):
            raise ValueError(f'variant must be "corrected" or "reference"; got {variant!r}.')
        self.step_size = step_size
        self.variant = variant
        self.loss_scale = loss_scale

    def sample(self, logits, seed=None, temperature=None):
        return ils_sample(logits, self.step_size, seed=seed, variant=self.variant, loss_scale=self.loss_scale)

    def distribution(self, logits, temperature=None):
        logits = tf.convert_to_tensor(logits)
        return tfd.OneHotCategorical(logits=logits, dtype=logits.dtype)

    def draw(self, logits, k, seed, temperature=None):
        logits = tf.convert_to_tensor(logits)
        draws = super().draw(tf.stop_gradient(logits), k, seed, temperature)
        tiled = tf.broadcast_to(logits, tf.shape(draws))
        return with_ils_gradient(tiled, draws, self.step_size, self.variant, self.loss_scale)

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
