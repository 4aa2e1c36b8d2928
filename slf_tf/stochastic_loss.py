"""Losses that combine a bag of candidates: SLF and its baselines, behind one API.

Every strategy is a ``keras.losses.Loss`` that drops into ``model.compile(loss=...)``
and into the custom-loop trainer alike::

    loss = slf_tf.StochasticLoss(["cross_entropy", "focal(gamma=2.0)", "mae"], k=3, seed=0)
    model.compile(optimizer="adam", loss=loss)

Calling it returns the per-example ``sum_i c_i l_i`` (Keras then averages over the
batch, giving ``L = sum_i c_i L_i``), with ``c`` held fixed (no gradient into the
decision network). Non-finite candidates are masked for that step and counted.

Strategies (DESIGN 1.6), all created by :func:`create_loss`:
  * ``slf``: :class:`StochasticLoss`, K Gumbel-Softmax draws + B() gate, learned by
    the validation hypergradient (:mod:`slf_tf.hypergrad`).
  * ``softmax``: ``StochasticLoss(k="inf")``: softmax weighting, same hypergradient.
  * ``fixed``: one named candidate.  ``uniform``: the mean of the bag.
  * ``random``: a random subset each step (K uniform draws), nothing learned.
  * ``uncertainty``: Kendall et al. 2018, learned log-variance per loss, trained on
    the training loss.  ``softadapt``: Heydari et al. 2019, weights = softmax of
    the recent relative loss slopes.

What each step chose is kept in variables for logging: ``last_losses``,
``last_coefficients``, ``last_gate``, ``last_weights``, ``selection_probabilities()``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from slf_tf import checks, gumbel, rng, schedules, selection
from slf_tf import decision as decision_lib
from slf_tf.losses import LossBag
from slf_tf.losses import get as get_candidate

__all__ = [
    "CombinedLoss",
    "FixedLoss",
    "RandomLoss",
    "SoftAdaptLoss",
    "StochasticLoss",
    "STRATEGIES",
    "UncertaintyLoss",
    "UniformLoss",
    "create_loss",
]

_DEFAULT_VALIDATION_LOSS = {"classification": "cross_entropy", "regression": "mse", "binary": "bce"}


class CombinedLoss(keras.losses.Loss):
    """Base class: a bag of candidates combined by coefficients ``c [N]`` chosen per step.

    Subclasses define :meth:`select` (the coefficients for this step, differentiable
    wrt :attr:`decision_variables`) and :attr:`update_rule`: ``"none"``,
    ``"hypergradient"`` (validation hypergradient) or ``"training_objective"``
    (minimise :meth:`decision_objective` on the training losses).

    Args:
      losses: candidate names, e.g. ``["cross_entropy", "focal(gamma=2.0)"]``.
      task: ``classification`` | ``regression`` | ``binary``.
      from_logits: whether ``y_pred`` holds logits (the default) or probabilities.
      normalize: divide each ``L_i`` by a running mean of its magnitude before
        combining, so that no candidate wins by scale alone.
      seed: stateless seed; step t uses ``rng.step_seed(seed, t)``.
      validation_loss: the candidate name of the validation objective of the
        hypergradient (default: cross_entropy / mse / bce by task).
      ema_decay: decay of the running means (loss scale, log-losses, validation).
      total_steps: length of training, for the progress feature of the ``state``
        decision network (0: unknown; progress stays 0).
    """

    strategy = "base"
    update_rule = "none"

    def __init__(
        self,
        losses: Sequence[str],
        *,
        task: str = "classification",
        from_logits: bool = True,
        normalize: bool = False,
        seed: int = 0,
        validation_loss: str | None = None,
        ema_decay: float = 0.9,
        total_steps: int = 0,
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        **kwargs: Any,
    ):
        super().__init__(name=name or self.strategy, reduction=reduction, **kwargs)
        self.bag = LossBag(losses, task=task, from_logits=from_logits)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1); got {ema_decay!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int; got {seed!r}.")
        self.task, self.from_logits, self.normalize = task, bool(from_logits), bool(normalize)
        self.seed, self.ema_decay, self.total_steps = seed, float(ema_decay), int(total_steps)
        self.validation_loss_spec = validation_loss or _DEFAULT_VALIDATION_LOSS[task]
        self.validation_loss = get_candidate(self.validation_loss_spec, task=task, from_logits=from_logits)
        n = len(self.bag)

        def state(shape, init, dtype="float32", name=None):
            return keras.Variable(init(shape, dtype) if callable(init) else init, trainable=False, name=name)

        self.step = keras.Variable(0, dtype="int64", trainable=False, name="step")
        self.sampling = keras.Variable(True, dtype="bool", trainable=False, name="sampling")
        self.last_losses = state((n,), tf.zeros, name="last_losses")
        self.last_coefficients = state((n,), tf.zeros, name="last_coefficients")
        self.last_gate = state((n,), tf.zeros, name="last_gate")
        self.last_weights = state((n,), tf.zeros, name="last_weights")
        self.selection_counts = state((n,), tf.zeros, name="selection_counts")  # sum of a over steps
        self.masked_counts = state((n,), tf.zeros, name="masked_counts")
        self.skipped_steps = keras.Variable(0, dtype="int64", trainable=False, name="skipped_steps")
        self.loss_scale = state((n,), tf.ones, name="loss_scale")
        self.running_log_losses = state((n,), tf.zeros, name="running_log_losses")
        self.running_val_loss = keras.Variable(0.0, trainable=False, name="running_val_loss")
        self._stats_initialized = keras.Variable(False, dtype="bool", trainable=False, name="stats_initialized")

    # ------------------------------------------------------------------ API --

    @property
    def names(self) -> list[str]:
        return self.bag.names

    @property
    def num_losses(self) -> int:
        return len(self.bag)

    @property
    def decision_variables(self) -> list:
        """Variables trained by the decision update (empty: nothing is learned)."""
        return []

    @property
    def state_variables(self) -> list:
        """Everything a checkpoint must hold to resume this loss exactly."""
        return [
            self.step,
            self.last_losses,
            self.last_coefficients,
            self.last_gate,
            self.last_weights,
            self.selection_counts,
            self.masked_counts,
            self.skipped_steps,
            self.loss_scale,
            self.running_log_losses,
            self.running_val_loss,
            self._stats_initialized,
        ]

    def features(self) -> tf.Tensor:
        """Training-state features ``[progress, running log L_i, running validation loss]``."""
        progress = (
            tf.minimum(tf.cast(self.step.value, tf.float32) / self.total_steps, 1.0)
            if self.total_steps > 0
            else tf.zeros([])
        )
        return tf.concat([[progress], self.running_log_losses.value, [self.running_val_loss.value]], axis=0)

    def select(self, seed: Any, finite: tf.Tensor) -> selection.Selection:
        """The coefficients for this step (differentiable wrt :attr:`decision_variables`)."""
        raise NotImplementedError

    def expected_coefficients(self, finite: tf.Tensor) -> tf.Tensor:
        """Noise-free coefficients, used in evaluation mode."""
        return self.select(rng.step_seed(self.seed, self.step.value), finite).coefficients

    def selection_probabilities(self) -> tf.Tensor:
        """P(candidate i is selected at a step), ``[N]``."""
        return tf.ones([self.num_losses])

    def decision_objective(self, losses: tf.Tensor) -> tf.Tensor:
        """For ``update_rule == "training_objective"``: the scalar to minimise given ``L [N]``."""
        raise NotImplementedError

    def per_example_losses(self, y_true: Any, y_pred: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """``(l [batch, N] with non-finite columns zeroed and scale-normalised, finite [N])``."""
        per_example = self.bag(y_true, y_pred)
        finite = tf.reduce_all(tf.math.is_finite(per_example), axis=0)
        per_example = tf.where(finite[None], per_example, tf.zeros_like(per_example))
        if self.normalize:
            per_example = per_example / tf.stop_gradient(tf.cast(self.loss_scale.value, per_example.dtype))
        return per_example, finite

    def combine(self, y_true: Any, y_pred: Any, seed: Any) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """``(per-example sum_i c_i l_i [batch], info)`` for one training step, without updating state."""
        per_example, finite = self.per_example_losses(y_true, y_pred)
        sel = self.select(seed, finite)
        c = tf.stop_gradient(tf.cast(sel.coefficients, per_example.dtype))
        info = {
            "losses": tf.reduce_mean(self.bag_raw_means(per_example), axis=0),
            "finite": finite,
            "coefficients": c,
            "gate": sel.gate,
            "weights": sel.weights,
        }
        return tf.linalg.matvec(per_example, c), info

    def bag_raw_means(self, per_example: tf.Tensor) -> tf.Tensor:
        """Undoes the scale normalisation (for logging the candidates' raw values)."""
        if self.normalize:
            return per_example * tf.cast(self.loss_scale.value, per_example.dtype)
        return per_example

    def update_state(self, info: dict[str, tf.Tensor]) -> tf.Operation:
        """Records a training step: last values, running means, counts; advances ``step``."""
        losses = tf.cast(info["losses"], tf.float32)
        finite = info["finite"]
        d = self.ema_decay
        init = self._stats_initialized.value
        safe = tf.where(finite, losses, self.loss_scale.value)
        new_scale = tf.where(init, d * self.loss_scale.value + (1 - d) * tf.abs(safe), tf.abs(safe) + 1e-12)
        log_l = tf.math.log(tf.abs(safe) + 1e-12)
        new_log = tf.where(init, d * self.running_log_losses.value + (1 - d) * log_l, log_l)
        none_finite = tf.logical_not(tf.reduce_any(finite))
        return tf.group(
            self.last_losses.assign(losses),
            self.last_coefficients.assign(tf.cast(info["coefficients"], tf.float32)),
            self.last_gate.assign(tf.cast(info["gate"], tf.float32)),
            self.last_weights.assign(tf.cast(info["weights"], tf.float32)),
            self.selection_counts.assign_add(tf.cast(info["gate"], tf.float32)),
            self.masked_counts.assign_add(tf.cast(tf.logical_not(finite), tf.float32)),
            self.skipped_steps.assign_add(tf.cast(none_finite, tf.int64)),
            self.loss_scale.assign(tf.where(finite, new_scale, self.loss_scale.value)),
            self.running_log_losses.assign(tf.where(finite, new_log, self.running_log_losses.value)),
            self._stats_initialized.assign(True),
            self.step.assign_add(1),
        )

    def update_validation_loss(self, value: tf.Tensor) -> None:
        """Folds a validation loss into the running mean used by the ``state`` features."""
        value = tf.cast(value, tf.float32)
        d = self.ema_decay
        new = tf.where(self.running_val_loss.value == 0.0, value, d * self.running_val_loss.value + (1 - d) * value)
        self.running_val_loss.assign(tf.where(tf.math.is_finite(value), new, self.running_val_loss.value))

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras casts y_true to float before call(); catch non-numeric labels first, with our message.
        dtype = y_true.dtype if hasattr(y_true, "dtype") else np.asarray(y_true).dtype
        if not (tf.as_dtype(dtype).is_floating or tf.as_dtype(dtype).is_integer or tf.as_dtype(dtype).is_bool):
            raise ValueError(f"y_true must be numeric (integer labels, one-hot or targets); got dtype {dtype}.")
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)

    def call(self, y_true, y_pred):
        """Keras entry point: samples while ``sampling`` is True (training), else expected coefficients."""

        def training():
            out, info = self.combine(y_true, y_pred, rng.step_seed(self.seed, self.step.value))
            with tf.control_dependencies([self.update_state(info)]):
                return tf.identity(out)

        def evaluation():
            per_example, finite = self.per_example_losses(y_true, y_pred)
            c = tf.stop_gradient(tf.cast(self.expected_coefficients(finite), per_example.dtype))
            return tf.linalg.matvec(per_example, c)

        return tf.cond(self.sampling.value, training, evaluation)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            losses=list(self.bag.specs),
            task=self.task,
            from_logits=self.from_logits,
            normalize=self.normalize,
            seed=self.seed,
            validation_loss=self.validation_loss_spec,
            ema_decay=self.ema_decay,
            total_steps=self.total_steps,
        )
        return config


@keras.saving.register_keras_serializable(package="slf_tf")
class StochasticLoss(CombinedLoss):
    """The Stochastic Loss Function (Liu & Lai, AAAI 2020).

    Args (beyond :class:`CombinedLoss`):
      k: Gumbel-Softmax draws per step (>= 1), or ``"inf"`` for softmax weighting.
      temperature: a number > 0, a :mod:`slf_tf.schedules` schedule, or its config.
      estimator: ``relaxed`` (default) | ``straight_through`` | ``reinforce`` | ``ils``.
      weighting: ``selected`` (softmax(beta) renormalised over the selected set) |
        ``all`` | ``none`` (plain mean of the selected losses).
      threshold: theta of the B() gate.
      decision: ``static`` or ``state`` (see :mod:`slf_tf.decision`).
      hidden_units: width of the ``state`` decision network.
      ils_step_size: step size of the ILS estimator.
    """

    strategy = "slf"
    update_rule = "hypergradient"

    def __init__(
        self,
        losses: Sequence[str],
        k: int | str = 3,
        temperature: Any = 1.0,
        *,
        estimator: str = "relaxed",
        weighting: str = "selected",
        threshold: float = 0.5,
        decision: str = "static",
        hidden_units: int = 32,
        ils_step_size: float = 0.1,
        **kwargs: Any,
    ):
        super().__init__(losses, **kwargs)
        selection.check_options(k, estimator, weighting)
        checks.check_temperature(ils_step_size, name="ils_step_size")
        self.k = "inf" if k == "inf" or k == float("inf") else int(k)
        self.schedule = schedules.get(temperature)
        self.estimator, self.weighting, self.threshold = estimator, weighting, float(threshold)
        self.decision_kind, self.hidden_units, self.ils_step_size = (
            decision,
            int(hidden_units),
            float(ils_step_size),
        )
        self.decision_network = decision_lib.create_decision_network(
            decision, self.num_losses, hidden_units=self.hidden_units, name=f"{self.name}_decision"
        )
        if type(self) is StochasticLoss and self.k == "inf":
            self.strategy = "softmax"
        self.reward_baseline = keras.Variable(0.0, trainable=False, name="reward_baseline")

    @property
    def state_variables(self):
        return super().state_variables + [self.reward_baseline]

    def update_reward_baseline(self, reward: tf.Tensor) -> None:
        """Moving-average baseline of the REINFORCE reward (updated after use)."""
        d = self.ema_decay
        reward = tf.cast(reward, tf.float32)
        self.reward_baseline.assign(
            tf.where(
                tf.math.is_finite(reward),
                d * self.reward_baseline.value + (1 - d) * reward,
                self.reward_baseline.value,
            )
        )

    @property
    def decision_variables(self) -> list:
        return list(self.decision_network.trainable_variables)

    def logits(self) -> tuple[tf.Tensor, tf.Tensor]:
        """The decision network's current ``(alpha, beta)``."""
        return self.decision_network(self.features())

    def temperature(self) -> tf.Tensor:
        return self.schedule(self.step.value)

    def select(self, seed, finite):
        alpha, beta = self.logits()
        return selection.select(
            alpha,
            beta,
            k=self.k,
            temperature=self.temperature(),
            seed=seed,
            finite=finite,
            estimator=self.estimator,
            weighting=self.weighting,
            threshold=self.threshold,
            ils_step_size=self.ils_step_size,
        )

    def expected_coefficients(self, finite):
        alpha, beta = self.logits()
        return selection.expected_coefficients(alpha, beta, k=self.k, finite=finite, weighting=self.weighting)

    def selection_probabilities(self):
        alpha, _ = self.logits()
        return gumbel.inclusion_probabilities(alpha, self.k)

    def get_config(self):
        config = super().get_config()
        config.update(
            k=self.k,
            temperature=schedules.serialize(self.schedule),
            estimator=self.estimator,
            weighting=self.weighting,
            threshold=self.threshold,
            decision=self.decision_kind,
            hidden_units=self.hidden_units,
            ils_step_size=self.ils_step_size,
        )
        return config


@keras.saving.register_keras_serializable(package="slf_tf")
class RandomLoss(StochasticLoss):
    """A random subset each step: K uniform draws and the gate, nothing learned."""

    strategy = "random"
    update_rule = "none"

    @property
    def decision_variables(self):
        return []


def _fixed_selection(c: tf.Tensor, finite: tf.Tensor) -> selection.Selection:
    c = c * tf.cast(finite, c.dtype)
    c = c / tf.maximum(tf.reduce_sum(c), 1e-12)
    gate = tf.cast(c > 0, c.dtype)
    return selection.Selection(c, gate, c, gate, tf.zeros([]))


@keras.saving.register_keras_serializable(package="slf_tf")
class FixedLoss(CombinedLoss):
    """One named candidate of the bag (``loss``; default the first)."""

    strategy = "fixed"

    def __init__(self, losses: Sequence[str], loss: str | None = None, **kwargs: Any):
        super().__init__(losses, **kwargs)
        chosen = loss if loss is not None else self.bag.specs[0]
        if chosen not in self.bag.specs:
            raise ValueError(f"The fixed loss {chosen!r} is not in the bag {self.bag.specs}.")
        self.fixed_loss = chosen
        self._one_hot = tf.one_hot(self.bag.specs.index(chosen), self.num_losses)

    def select(self, seed, finite):
        return _fixed_selection(self._one_hot, finite)

    def selection_probabilities(self):
        return self._one_hot

    def get_config(self):
        return {**super().get_config(), "loss": self.fixed_loss}


@keras.saving.register_keras_serializable(package="slf_tf")
class UniformLoss(CombinedLoss):
    """The mean of the bag."""

    strategy = "uniform"

    def select(self, seed, finite):
        return _fixed_selection(tf.ones([self.num_losses]), finite)


@keras.saving.register_keras_serializable(package="slf_tf")
class UncertaintyLoss(CombinedLoss):
    """Kendall, Gal & Cipolla 2018: ``sum_i exp(-s_i) L_i / 2 + s_i / 2``, learned ``s_i = log sigma_i^2``.

    The main network sees coefficients ``c_i = exp(-s_i) / 2``; ``s`` is trained on
    the same objective (the ``training_objective`` update rule).
    """

    strategy = "uncertainty"
    update_rule = "training_objective"

    def __init__(self, losses: Sequence[str], **kwargs: Any):
        super().__init__(losses, **kwargs)
        self.log_variance = keras.Variable(tf.zeros([self.num_losses]), name="log_variance")

    @property
    def decision_variables(self):
        return [self.log_variance]

    def select(self, seed, finite):
        c = 0.5 * tf.exp(-self.log_variance.value) * tf.cast(finite, tf.float32)
        gate = tf.cast(finite, tf.float32)
        return selection.Selection(c, gate, c, gate, tf.zeros([]))

    def decision_objective(self, losses):
        s = self.log_variance.value
        return tf.reduce_sum(0.5 * tf.exp(-s) * tf.stop_gradient(losses) + 0.5 * s)


@keras.saving.register_keras_serializable(package="slf_tf")
class SoftAdaptLoss(CombinedLoss):
    """Heydari et al. 2019: ``c = softmax(beta * slope)``, slopes of the running losses.

    ``slope_i`` is the relative change of the running mean of ``L_i`` over the last
    step, so a candidate that stops improving gets more weight.
    """

    strategy = "softadapt"

    def __init__(self, losses: Sequence[str], beta: float = 10.0, **kwargs: Any):
        super().__init__(losses, **kwargs)
        self.beta = float(beta)
        self.previous_scale = keras.Variable(tf.ones([self.num_losses]), trainable=False, name="previous_scale")

    @property
    def state_variables(self):
        return super().state_variables + [self.previous_scale]

    def _slopes(self):
        prev = self.previous_scale.value
        return (self.loss_scale.value - prev) / tf.maximum(prev, 1e-12)

    def select(self, seed, finite):
        logits = tf.where(finite, self.beta * self._slopes(), -1e9)
        c = tf.nn.softmax(logits) * tf.cast(finite, tf.float32)
        gate = tf.cast(finite, tf.float32)
        return selection.Selection(c, gate, c, gate, tf.zeros([]))

    def update_state(self, info):
        keep = tf.identity(self.loss_scale.value)
        with tf.control_dependencies([keep]):
            update = super().update_state(info)
        with tf.control_dependencies([update]):
            return self.previous_scale.assign(keep)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


STRATEGIES = {
    "slf": StochasticLoss,
    "softmax": StochasticLoss,
    "fixed": FixedLoss,
    "uniform": UniformLoss,
    "random": RandomLoss,
    "uncertainty": UncertaintyLoss,
    "softadapt": SoftAdaptLoss,
}


def create_loss(strategy: str, losses: Sequence[str], **kwargs: Any) -> CombinedLoss:
    """A combined loss by strategy name; unknown names raise ``ValueError`` listing the known ones.

    Keyword arguments a strategy does not take (e.g. ``k`` for ``uniform``) are ignored,
    so one config can switch strategies.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown loss strategy {strategy!r}; known: {sorted(STRATEGIES)}.")
    cls = STRATEGIES[strategy]
    if strategy == "softmax":
        kwargs["k"] = "inf"
    allowed = set(inspect.signature(cls.__init__).parameters) | set(inspect.signature(CombinedLoss.__init__).parameters)
    if cls in (StochasticLoss, RandomLoss):
        allowed |= set(inspect.signature(StochasticLoss.__init__).parameters)
    return cls(losses, **{k: v for k, v in kwargs.items() if k in allowed})
