"""Losses that combine a bag of candidates: SLF and its baselines, behind one API.

Every strategy is a ``keras.losses.Loss`` that drops into ``model.compile(loss=...)``
and into the training step (:mod:`slf_tf.train_step`) alike::

    loss = slf_tf.StochasticLoss(["cross_entropy", "focal(gamma=2.0)", "mae"], k=3, seed=0)

One step of any strategy: :meth:`CombinedLoss.sample` chooses coefficients ``c``
(differentiable wrt :attr:`~CombinedLoss.decision_variables`),
:meth:`CombinedLoss.candidate_losses` evaluates the bag on a batch, and
:meth:`CombinedLoss.combine` turns them into the per-example objective
``sum_i c_i l_i`` (non-finite candidates masked). :meth:`CombinedLoss.decision_loss`
is the strategy's rule for its decision variables, and :meth:`CombinedLoss.record`
the step's bookkeeping. Strategies (docs/design.md, "Baselines"), all made by
:func:`create_loss`:

  * ``slf``: :class:`StochasticLoss`, K draws + the B() gate, learned by the
    validation hypergradient.  ``softmax``: the same with ``k="inf"``.
  * ``fixed``: one named candidate.  ``uniform``: the mean of the bag.
  * ``random``: a random subset each step (K uniform draws), nothing learned.
  * ``uncertainty``: Kendall et al. 2018, learned log-variance per loss, trained
    on the training loss.  ``softadapt``: Heydari et al. 2019, weights = softmax
    of the recent relative loss slopes.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from slf_tf import checks, distributed, gumbel, rng, schedules, selection
from slf_tf import decision as decision_lib
from slf_tf import transition as transition_lib
from slf_tf.losses import LossBag, candidate_tag, keras_mask, position_weights, reduce_positions
from slf_tf.losses import get as get_candidate

__all__ = [
    "CombinedLoss",
    "candidate_tag",
    "FixedLoss",
    "RandomLoss",
    "SoftAdaptLoss",
    "StochasticLoss",
    "STRATEGIES",
    "UncertaintyLoss",
    "UniformLoss",
    "create_loss",
]

tfd = tfp.distributions
_DEFAULT_VALIDATION_LOSS = {"classification": "cross_entropy", "regression": "mse", "binary": "bce"}


def _check_num_classes(num_classes: Any, bag: LossBag) -> int:
    """``num_classes`` where the bag holds ``forward`` (its noise matrix is ``[C, C]``), else 0."""
    if "forward" not in [c.name for c in bag.candidates]:
        return 0
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"The 'forward' candidate needs num_classes (an int >= 2: its noise matrix is [C, C]); got {num_classes!r}."
        )
    return num_classes


def _state(init: Any, dtype: str = "float32", name: str | None = None) -> keras.Variable:
    """A non-trainable state variable. On-read, first-replica under a tf.distribute strategy:
    every replica updates its own copy from the same (all-reduced) inputs, with no synchronisation."""
    return keras.Variable(
        init,
        dtype=dtype,
        trainable=False,
        synchronization="on_read",
        aggregation="only_first_replica",
        name=name,
    )


class CombinedLoss(keras.losses.Loss):
    """Base class: a bag of candidates combined by coefficients ``c [N]`` chosen per step.

    Args:
      losses: candidate names, e.g. ``["cross_entropy", "focal(gamma=2.0)"]``.
      task: ``classification`` | ``regression`` | ``binary``.
      from_logits: whether ``y_pred`` holds logits (the default) or probabilities.
      normalize: divide each ``L_i`` by a running mean of its magnitude before
        combining, so that no candidate wins by scale alone.
      seed: stateless seed; step t uses ``rng.step_seed(seed, t)``.
      validation_loss: the candidate name of the validation objective ``J`` of the
        hypergradient (default: cross_entropy / mse / bce by task).
      ema_decay: decay of the running means (loss scale, log-losses, validation).
      total_steps: length of training, for the progress feature of the ``state``
        decision network (0: unknown; progress stays 0).

    As a compiled Keras loss it returns the per-example ``sum_i c_i l_i`` with
    ``c`` held fixed. It samples (and advances its state) only while
    :attr:`sampling` is on, which :class:`slf_tf.callbacks.DecisionUpdate` turns on
    for training batches; otherwise -- ``evaluate``, ``predict``, validation, or a
    ``fit`` without the callback -- it uses the noise-free
    :meth:`expected_coefficients` and changes no state.
    """

    strategy = "base"
    #: The decision update needs the validation hypergradient (the lookahead).
    needs_lookahead = False
    #: The decision update also needs J(w), the validation loss before the virtual step.
    needs_val_loss_before = False
    #: The rule needs per-example scores D [batch, N] (:func:`slf_tf.hypergrad.reweighted_lookahead`).
    needs_example_scores = False
    #: Example weights come from this step's lookahead (the main gradient follows it, every step).
    reweights_from_lookahead = False
    #: ...taken at the current weights (Learning to Reweight Examples) instead of the virtual step's w'.
    lookahead_from_current = False
    #: The decision optimizer's learning rate where none is given.
    decision_learning_rate = 0.02
    #: The trust region on the virtual step where ``decision.trust_region`` is None (docs/design.md).
    trust_region_by_default = True

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
        num_classes: int = 0,
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        **kwargs: Any,
    ):
        super().__init__(name=name or self.strategy, reduction=reduction, **kwargs)
        self.bag = LossBag(losses, task=task, from_logits=from_logits)
        self.num_classes = _check_num_classes(num_classes, self.bag)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1); got {ema_decay!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int; got {seed!r}.")
        self.task, self.from_logits, self.normalize = task, bool(from_logits), bool(normalize)
        self.seed, self.ema_decay, self.total_steps = seed, float(ema_decay), int(total_steps)
        self.validation_loss_spec = validation_loss or _DEFAULT_VALIDATION_LOSS[task]
        self.validation_loss = get_candidate(self.validation_loss_spec, task=task, from_logits=from_logits)
        n = len(self.bag)
        self.step = _state(0, "int64", name="step")  # training steps taken
        self.sampling = _state(False, "bool", name="sampling")
        # [loss scale (N), running log L_i (N), running validation loss, initialised]
        self.running = _state(np.concatenate([np.ones(n), np.zeros(n + 2)]).astype(np.float32), name="running")
        # [times selected (N), sum P(selected) (N), sum of weights (N), masked (N), skipped steps]
        self.totals = _state(np.zeros(4 * n + 1, np.float32), name="totals")
        # [losses, coefficients, gate, weights] of the last training step, [4, N]
        self.last = _state(np.zeros((4, n), np.float32), name="last")
        # The trust region's scale of the virtual step (1: the optimizer's own step; docs/design.md,
        # "The trust region"). Saved after the decision variables, so files from before it still load.
        self.virtual_scale = _state(1.0, name="virtual_scale")
        # The `forward` candidate's noise matrix (slf_tf/transition.py): the identity until the restart.
        self.transition = (
            _state(np.eye(self.num_classes, dtype=np.float32), name="transition") if self.num_classes else None
        )

    # ------------------------------------------------------------ state views --

    @property
    def names(self) -> list[str]:
        return self.bag.names

    @property
    def num_losses(self) -> int:
        return len(self.bag)

    def _part(self, variable: keras.Variable, i: int) -> tf.Tensor:
        n = self.num_losses
        return tf.convert_to_tensor(variable)[i * n : (i + 1) * n]

    last_losses = property(lambda self: tf.convert_to_tensor(self.last)[0], doc="Candidate losses L_i, last step.")
    last_coefficients = property(lambda self: tf.convert_to_tensor(self.last)[1], doc="c used in the last step.")
    last_gate = property(lambda self: tf.convert_to_tensor(self.last)[2], doc="The gate a of the last step.")
    last_weights = property(lambda self: tf.convert_to_tensor(self.last)[3], doc="The weights b of the last step.")
    times_selected = property(
        lambda self: self._part(self.totals, 0), doc="Steps in which each candidate was selected."
    )
    probability_sums = property(lambda self: self._part(self.totals, 1), doc="Sum over steps of P(selected).")
    weight_sums = property(lambda self: self._part(self.totals, 2), doc="Sum over steps of the weights b.")
    masked_counts = property(lambda self: self._part(self.totals, 3), doc="Steps in which each candidate was masked.")
    skipped_steps = property(lambda self: tf.convert_to_tensor(self.totals)[-1], doc="Steps with no finite candidate.")
    loss_scale = property(lambda self: self._part(self.running, 0), doc="Running mean of |L_i|.")
    running_log_losses = property(lambda self: self._part(self.running, 1), doc="Running mean of log L_i.")
    running_val_loss = property(lambda self: tf.convert_to_tensor(self.running)[-2], doc="Running validation loss.")

    @property
    def tags(self) -> list[str]:
        """TensorBoard- and log-safe candidate names: ``focal(gamma=2.0)`` -> ``focal_gamma_2.0``."""
        return [candidate_tag(name) for name in self.names]

    def decision_summary(self) -> dict[str, tf.Tensor]:
        """What the decision network chooses now, as scalars for Keras logs (names sort by quantity):
        ``slf_p_<candidate>`` (P(selected)), ``slf_w_<candidate>`` (the weight softmax(beta)), ``slf_temperature``."""
        probabilities, weights = self.selection_probabilities(), self.current_weights()
        out = {f"slf_p_{t}": probabilities[i] for i, t in enumerate(self.tags)}
        out.update({f"slf_w_{t}": weights[i] for i, t in enumerate(self.tags)})
        if hasattr(self, "temperature"):
            out["slf_temperature"] = self.temperature()
        return out

    def current_weights(self) -> tf.Tensor:
        """The weights ``b [N]`` the decision network gives now (a strategy's own coefficients if it has no b)."""
        return self.expected_coefficients()

    @property
    def decision_variables(self) -> list:
        """Variables trained by the decision update (empty: nothing is learned)."""
        return []

    @property
    def state_variables(self) -> list:
        """Everything a checkpoint must hold to resume this loss exactly."""
        return [self.step, self.running, self.totals, self.last] + (
            [] if self.transition is None else [self.transition]
        )

    def set_transition(self, matrix: Any) -> None:
        """Assigns the ``forward`` candidate's noise matrix ``[C, C]`` (rows: P(noisy label | clean label))."""
        if self.transition is None:
            raise ValueError(f"This loss has no 'forward' candidate, so no noise matrix; its bag: {self.bag.specs}.")
        self.transition.assign(transition_lib.check(matrix, self.num_classes))

    def forget_candidate(self, name: str, optimizer: keras.optimizers.Optimizer | None = None) -> bool:
        """Forgets what the decision learned of candidate ``name`` (``DecisionNetwork.forget``); called when
        ``forward`` gets its noise matrix. Returns whether there was anything to forget: a loss without
        per-candidate decision logits has none."""
        if name not in self.names:
            raise ValueError(f"forget_candidate: {name!r} is not in this loss's bag; its bag: {self.names}.")
        return False

    # ------------------------------------------------------------- the choice --

    def features(self) -> tf.Tensor:
        """Training-state features ``[progress, running log L_i, running validation loss]``."""
        if self.total_steps > 0:
            progress = tf.minimum(tf.cast(tf.convert_to_tensor(self.step), tf.float32) / self.total_steps, 1.0)
        else:
            progress = tf.zeros([])
        return tf.concat([[progress], self.running_log_losses, [self.running_val_loss]], axis=0)

    def sample(self, seed: Any) -> selection.Selection:
        """This step's choice (coefficients differentiable wrt :attr:`decision_variables`)."""
        raise NotImplementedError

    def expected_coefficients(self) -> tf.Tensor:
        """Noise-free coefficients ``[N]`` (evaluation)."""
        return self.sample(rng.step_seed(self.seed, 0)).coefficients

    def selection_probabilities(self) -> tf.Tensor:
        """P(candidate i is selected at a step), ``[N]``."""
        return tf.ones([self.num_losses])

    def decision_loss(self, choice: selection.Selection, lookahead: Any) -> tf.Tensor:
        """The scalar the decision optimizer minimises (see :mod:`slf_tf.train_step`)."""
        raise NotImplementedError(f"The {self.strategy!r} strategy learns nothing.")

    def forward_example_weights(self, combined: tf.Tensor) -> tf.Tensor:
        """Per-example weights ``e [batch]`` of the training objective ``sum_j e_j combined_j / n`` (ones here)."""
        return tf.ones_like(combined)

    def lookahead_example_weights(self, scores: tf.Tensor, forward: Any) -> tf.Tensor:
        """The example weights a lookahead's scores give (strategies with :attr:`reweights_from_lookahead`)."""
        raise NotImplementedError(f"The {self.strategy!r} strategy does not weight examples from the lookahead.")

    # -------------------------------------------------------------- the losses --

    def candidate_losses(
        self, y_true: Any, y_pred: Any, sample_weight: Any = None, mask: Any = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """``(l [batch, N], finite [N])``: non-finite columns zeroed (on any replica), scale-normalised.

        ``l[j, i]`` is candidate i's loss on example j: its mean over the example's
        positions, weighted by ``sample_weight`` and the Keras ``mask`` (default: the
        mask of ``y_pred``) as Keras weighs them (:func:`slf_tf.losses.position_weights`).
        """
        per_example = self.bag(y_true, y_pred, sample_weight, mask, transition=self.transition)
        finite = distributed.all_true(tf.reduce_all(tf.math.is_finite(per_example), axis=0))
        per_example = tf.where(finite[None], per_example, tf.zeros_like(per_example))
        if self.normalize:
            per_example = per_example / tf.stop_gradient(tf.cast(self.loss_scale, per_example.dtype))
        return per_example, finite

    def unnormalize(self, losses: tf.Tensor) -> tf.Tensor:
        """Undoes the scale normalisation of candidate losses ``[..., N]`` (for logging raw values)."""
        return losses * tf.cast(self.loss_scale, losses.dtype) if self.normalize else losses

    def combine(
        self, per_example: tf.Tensor, finite: tf.Tensor, coefficients: tf.Tensor, fallback: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """``(sum_i c_i l_i [batch], c [N])``: the objective per example and the masked coefficients used.

        ``coefficients`` are a selection's ``c``, usually behind a stop-gradient (or
        a tensor a tape watches, for dJ/dc); non-finite candidates are masked, with
        ``fallback`` (the selection's weights) used if every selected one is
        (:func:`slf_tf.selection.mask`).
        """
        c = selection.mask(coefficients, finite, fallback)
        return tf.linalg.matvec(per_example, tf.cast(c, per_example.dtype)), c

    # ------------------------------------------------------------ bookkeeping --

    def record(
        self,
        choice: selection.Selection,
        coefficients: tf.Tensor,
        losses: tf.Tensor,
        finite: tf.Tensor,
        val_loss: tf.Tensor | None = None,
        enabled: Any = True,
    ) -> tf.Operation:
        """One training step's bookkeeping in four assigns; ``step += 1``.

        Args:
          choice, coefficients: the step's selection and the masked ``c`` it used.
          losses: the candidates' raw batch means ``[N]`` (global under a strategy).
          finite: ``[N]`` mask of the step.
          val_loss: the validation loss of a decision update, folded into the
            running mean the ``state`` features read.
          enabled: a bool tensor; False leaves every variable as it was.
        """
        n, d = self.num_losses, self.ema_decay
        f32 = lambda t: tf.cast(t, tf.float32)  # noqa: E731
        losses, gate, weights = f32(losses), f32(choice.gate), f32(choice.weights)
        run = tf.convert_to_tensor(self.running)
        scale, log_l, val, initialised = run[:n], run[n : 2 * n], run[2 * n], run[2 * n + 1] > 0
        magnitude = tf.abs(tf.where(finite, losses, scale)) + 1e-12
        new_scale = tf.where(initialised, d * scale + (1 - d) * magnitude, magnitude)
        new_log = tf.where(initialised, d * log_l + (1 - d) * tf.math.log(magnitude), tf.math.log(magnitude))
        new_val = val if val_loss is None else self._fold_validation(val, val_loss)
        running = tf.concat(
            [tf.where(finite, new_scale, scale), tf.where(finite, new_log, log_l), [new_val, 1.0]], axis=0
        )
        none_finite = f32(tf.logical_not(tf.reduce_any(finite)))
        added = [gate, f32(self.selection_probabilities()), weights, 1.0 - f32(finite), [none_finite]]
        totals = tf.convert_to_tensor(self.totals) + tf.concat(added, axis=0)
        last = tf.stack([losses, f32(coefficients), gate, weights])
        if enabled is not True:
            running = tf.where(enabled, running, run)
            totals = tf.where(enabled, totals, self.totals)
            last = tf.where(enabled, last, self.last)
        return tf.group(
            self.running.assign(running),
            self.totals.assign(totals),
            self.last.assign(last),
            self.step.assign_add(tf.cast(enabled, tf.int64)),
        )

    def _fold_validation(self, running: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
        """The running validation loss after folding in ``value`` (non-finite values are ignored)."""
        d, v = self.ema_decay, tf.cast(value, tf.float32)
        return tf.where(tf.math.is_finite(v), tf.where(running == 0.0, v, d * running + (1 - d) * v), running)

    def record_validation_loss(self, value: tf.Tensor) -> tf.Operation:
        """Folds a decision update's validation loss into the running mean the ``state`` features read."""
        run = tf.convert_to_tensor(self.running)
        n = self.num_losses
        return self.running.assign(tf.concat([run[: 2 * n], [self._fold_validation(run[2 * n], value)], run[-1:]], 0))

    # ------------------------------------------------------------------ Keras --

    def __call__(self, y_true, y_pred, sample_weight=None):
        """Keras' loss call: the per-example objective (:meth:`call`), reduced as ``self.reduction`` says.

        Keras' own ``Loss.__call__`` would apply ``sample_weight`` and the mask of
        ``y_pred`` to the per-example values again; here :meth:`candidate_losses`
        applies them once, per position, and this reduces over examples (dividing
        by the replicas under a ``tf.distribute`` strategy, as Keras does).
        """
        # Keras casts y_true to float; catch non-numeric labels first, with our message.
        dtype = y_true.dtype if hasattr(y_true, "dtype") else np.asarray(y_true).dtype
        if not (tf.as_dtype(dtype).is_floating or tf.as_dtype(dtype).is_integer or tf.as_dtype(dtype).is_bool):
            raise ValueError(f"y_true must be numeric (integer labels, one-hot or targets); got dtype {dtype}.")
        mask = keras_mask(y_pred)
        with tf.name_scope(self.name):
            y_pred = tf.cast(tf.convert_to_tensor(y_pred), self.dtype)
            y_true = tf.cast(tf.convert_to_tensor(y_true), self.dtype)
            objective = self.call(y_true, y_pred, sample_weight, mask)
            return self._reduce(objective, y_true, y_pred, sample_weight, mask)

    def _reduce(self, objective: tf.Tensor, y_true: Any, y_pred: Any, sample_weight: Any, mask: Any) -> tf.Tensor:
        """Keras' reductions of per-example values ``[batch]``: ``none``, ``sum``, ``sum_over_batch_size``
        (= ``mean``), ``mean_with_sample_weight`` (the sum over the sum of the weights)."""
        if self.reduction in (None, "none"):
            return objective
        total = tf.reduce_sum(objective)
        if self.reduction == "sum":
            return total
        divisor = tf.cast(tf.size(objective), total.dtype)
        if self.reduction == "mean_with_sample_weight" and (sample_weight is not None or mask is not None):
            positions = tf.ones_like(self.validation_loss.per_position(y_true, y_pred))  # [batch, P]
            divisor = tf.reduce_sum(reduce_positions(positions, position_weights(positions, sample_weight, mask)))
        return tf.math.divide_no_nan(total, divisor) / distributed.num_replicas()

    def call(self, y_true, y_pred, sample_weight=None, mask=None):
        """The per-example objective ``sum_i c_i l_i`` ``[batch]``: this step's sample while :attr:`sampling` is
        on, else the expected coefficients (``sample_weight`` and ``mask`` as in :meth:`candidate_losses`)."""
        per_example, finite = self.candidate_losses(y_true, y_pred, sample_weight, mask)
        sampling = tf.convert_to_tensor(self.sampling)
        choice = self.sample(rng.step_seed(self.seed, self.step))
        coefficients = tf.where(sampling, choice.coefficients, self.expected_coefficients())
        objective, c = self.combine(per_example, finite, tf.stop_gradient(coefficients), choice.weights)
        # Example weights (meta_weight_net) shape training only: evaluation reports the unweighted loss.
        weights = tf.cast(self.forward_example_weights(objective), objective.dtype)
        objective *= tf.stop_gradient(tf.where(sampling, weights, tf.ones_like(weights)))
        count = distributed.all_sum(tf.cast(tf.shape(per_example)[0], per_example.dtype))
        losses = self.unnormalize(distributed.all_sum(tf.reduce_sum(per_example, axis=0)) / count)
        with tf.control_dependencies([self.record(choice, c, losses, finite, enabled=sampling)]):
            return tf.identity(objective)

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
            num_classes=self.num_classes,
        )
        # The learned state travels with the config, so a .keras model reloads its loss where it was
        # (the step, and with it the temperature schedule; the decision network; the running statistics).
        saved = self.state_variables + self.decision_variables + [self.virtual_scale]
        config["state"] = [np.asarray(v).tolist() for v in saved]
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CombinedLoss:
        config = dict(config)
        state = config.pop("state", None)
        if "decision" in config:  # saved before decision -> decision_network
            config["decision_network"] = config.pop("decision")
        loss = cls(**config)
        if state is not None:
            loss.load_state(state)
        return loss

    def load_state(self, state: list) -> None:
        """Assigns values saved by :meth:`get_config` (``state_variables``, ``decision_variables``, the scale).

        A state saved before the trust region existed lacks the scale, which then starts at 1.
        """
        variables = self.state_variables + self.decision_variables + [self.virtual_scale]
        if len(state) == len(variables) - 1:
            variables = variables[:-1]
        if len(state) != len(variables):
            raise ValueError(f"Saved loss state has {len(state)} values; this loss has {len(variables)} variables.")
        values = []
        for variable, value in zip(variables, state, strict=True):
            array = np.asarray(value, dtype=np.dtype(variable.dtype))
            if array.size != int(np.prod(variable.shape)):
                raise ValueError(
                    f"Saved loss state for {variable.path!r} has {array.size} values; it needs shape {variable.shape}."
                )
            # The last step's candidate losses may be non-finite (a masked candidate); nothing else may be.
            if variable is not self.last and not np.all(np.isfinite(array)):
                raise ValueError(
                    f"Saved loss state for {variable.path!r} holds non-finite values: the file is damaged or was "
                    "edited. Load it with compile=False and compile with a fresh loss, or use an earlier save."
                )
            values.append(array.reshape(variable.shape))
        for variable, array in zip(variables, values, strict=True):  # all checked first: nothing half-assigned
            variable.assign(array)


@keras.saving.register_keras_serializable(package="slf_tf")
class StochasticLoss(CombinedLoss):
    """The Stochastic Loss Function (Liu & Lai, AAAI 2020).

    Args (beyond :class:`CombinedLoss`):
      k: draws per step (>= 1), or ``"inf"`` for softmax weighting.
      temperature: a number > 0, a :mod:`slf_tf.schedules` schedule, or its config.
      estimator: ``relaxed`` (default) | ``straight_through`` | ``reinforce`` | ``ils``.
      weighting: ``selected`` (softmax(beta) renormalised over the selected set) |
        ``all`` | ``none`` (plain mean of the selected losses).
      threshold: theta of the B() gate.
      decision_network: ``static`` or ``state`` (see :mod:`slf_tf.decision`).
      hidden_units: width of the ``state`` decision network.
      ils_step_size: step size of the ILS estimator.
    """

    strategy = "slf"
    needs_lookahead = True

    def __init__(
        self,
        losses: Sequence[str],
        k: int | str = 3,
        temperature: Any = 1.0,
        *,
        estimator: str = "relaxed",
        weighting: str = "selected",
        threshold: float = 0.5,
        decision_network: str = "static",
        hidden_units: int = 32,
        ils_step_size: float = 0.1,
        **kwargs: Any,
    ):
        super().__init__(losses, **kwargs)
        selection.check_options(k, estimator, weighting)
        checks.check_positive(ils_step_size, name="ils_step_size")
        self.k = "inf" if selection.is_softmax(k) else int(k)
        self.schedule = schedules.get(temperature)
        self.estimator, self.weighting, self.threshold = estimator, weighting, float(threshold)
        self.selector = selection.create_estimator(estimator, ils_step_size)
        self.decision_kind, self.hidden_units, self.ils_step_size = (
            decision_network,
            int(hidden_units),
            float(ils_step_size),
        )
        self.decision_network = decision_lib.create_decision_network(
            decision_network, self.num_losses, hidden_units=self.hidden_units, name=f"{self.name}_decision"
        )
        self.decision_learning_rate = type(self).decision_learning_rate * decision_lib.learning_rate_scale(
            decision_network, self.hidden_units
        )
        if type(self) is StochasticLoss and self.k == "inf":
            self.strategy = "softmax"

    @property
    def state_variables(self):
        return super().state_variables + list(self.selector.variables)

    @property
    def decision_variables(self) -> list:
        return list(self.decision_network.trainable_variables)

    @property
    def needs_val_loss_before(self) -> bool:
        return not self.selector.pathwise  # the REINFORCE reward J(w) - J(w')

    def forget_candidate(self, name, optimizer=None):
        super().forget_candidate(name, optimizer)
        self.decision_network.forget(self.names.index(name), optimizer)
        return True

    def logits(self) -> tuple[tf.Tensor, tf.Tensor]:
        """The decision network's current ``(alpha, beta)``."""
        return self.decision_network(self.features())

    def temperature(self) -> tf.Tensor:
        return self.schedule(tf.convert_to_tensor(self.step))

    def sample(self, seed):
        alpha, beta = self.logits()
        return selection.sample(
            self.selector,
            alpha,
            beta,
            k=self.k,
            temperature=self.temperature(),
            seed=seed,
            weighting=self.weighting,
            threshold=self.threshold,
        )

    def expected_coefficients(self):
        alpha, beta = self.logits()
        return selection.expected_coefficients(alpha, beta, k=self.k, weighting=self.weighting)

    def selection_probabilities(self):
        return gumbel.inclusion_probabilities(self.logits()[0], self.k)

    def current_weights(self):
        return tf.nn.softmax(self.logits()[1])

    def selection_distribution(self) -> tfd.Distribution:
        """The TFP distribution each of this step's K draws follows (``[N]`` events).

        ``RelaxedOneHotCategorical(temperature, logits=alpha)`` for the relaxed and
        straight-through estimators (straight-through rounds its samples to
        one-hot), ``OneHotCategorical(logits=alpha)`` for ``reinforce`` and ``ils``.
        """
        return self.selector.distribution(self.logits()[0], self.temperature())

    def selection_entropy(self) -> tf.Tensor:
        """Entropy of ``Categorical(softmax(alpha))``, the exploration bonus of the decision update."""
        return tfd.OneHotCategorical(logits=self.logits()[0]).entropy()

    def decision_loss(self, choice, lookahead):
        """``sum_i c_i(v) * dJ/dc_i`` (dJ/dc held fixed): its gradient is ``dJ/dv`` through the sampler.

        With ``reinforce`` the draws carry no gradient, so alpha learns from the
        score function instead: ``(J(w') - J(w) - baseline) * grad log P(draws)``.
        """
        c = choice.coefficients
        objective = tf.reduce_sum(c * tf.stop_gradient(tf.cast(lookahead.coefficient_gradient, c.dtype)))
        if not self.selector.pathwise and choice.draws is not None:
            cost = tf.cast(lookahead.val_loss - lookahead.val_loss_before, c.dtype)
            costs = tf.fill(tf.shape(choice.draws)[:1], cost)
            alpha = tf.broadcast_to(self.logits()[0], tf.shape(choice.draws))
            objective += tf.reduce_sum(self.selector.surrogate(costs, alpha, choice.draws))
        return objective

    def get_config(self):
        config = super().get_config()
        config.update(
            k=self.k,
            temperature=schedules.serialize(self.schedule),
            estimator=self.estimator,
            weighting=self.weighting,
            threshold=self.threshold,
            decision_network=self.decision_kind,
            hidden_units=self.hidden_units,
            ils_step_size=self.ils_step_size,
        )
        return config


@keras.saving.register_keras_serializable(package="slf_tf")
class RandomLoss(StochasticLoss):
    """A random subset each step: K uniform draws and the gate, nothing learned."""

    strategy = "random"
    needs_lookahead = False

    @property
    def decision_variables(self):
        return []


def _fixed_selection(c: tf.Tensor) -> selection.Selection:
    gate = tf.cast(c > 0, c.dtype)
    return selection.Selection(c, gate, c, gate, None)


@keras.saving.register_keras_serializable(package="slf_tf")
class FixedLoss(CombinedLoss):
    """One named candidate of the bag (``loss``; default the first)."""

    strategy = "fixed"

    def __init__(self, losses: Sequence[str], loss: str | None = None, **kwargs: Any):
        super().__init__(losses, **kwargs)
        chosen = loss if loss is not None else self.bag.specs[0]
        if chosen not in self.bag.specs:
            raise ValueError(f"The fixed loss {chosen!r} is not in the bag {self.bag.specs}.")
        if chosen == "forward":
            raise ValueError(
                "'forward' cannot be the fixed loss: its noise matrix is estimated at the restart, which only a "
                "decision learned from the clean split has (slf, softmax, joint); alone it would be cross-entropy. "
                "strategy 'glc' is cross-entropy, then forward with the matrix estimated."
            )
        self.fixed_loss = chosen
        self._one_hot = tf.one_hot(self.bag.specs.index(chosen), self.num_losses)

    def sample(self, seed):
        return _fixed_selection(self._one_hot)

    def selection_probabilities(self):
        return self._one_hot

    def get_config(self):
        return {**super().get_config(), "loss": self.fixed_loss}


@keras.saving.register_keras_serializable(package="slf_tf")
class GLCLoss(CombinedLoss):
    """Gold Loss Correction (Hendrycks et al. 2018), a peer that uses the clean split as SLF does:
    cross-entropy until the restart point, where ``forward``'s noise matrix is estimated on the clean split
    from the network trained so far; then (fresh weights, as the restart gives them) ``forward`` alone.

    The bag must hold ``cross_entropy`` and ``forward``; ``num_classes`` sizes the matrix.
    """

    strategy = "glc"
    #: The restart (the estimate, then fresh weights) is part of the method, with no decision to learn.
    restarts = True

    def __init__(self, losses: Sequence[str], **kwargs: Any):
        super().__init__(losses, **kwargs)
        if self.transition is None or "cross_entropy" not in self.bag.specs:
            raise ValueError(f"glc needs 'cross_entropy' and 'forward' in its bag; got {self.bag.specs}.")
        self.corrected = _state(False, "bool", name="corrected")  # the matrix has been estimated
        self._before = tf.one_hot(self.bag.specs.index("cross_entropy"), self.num_losses)
        self._after = tf.one_hot(self.bag.specs.index("forward"), self.num_losses)

    @property
    def state_variables(self):
        return super().state_variables + [self.corrected]

    def set_transition(self, matrix: Any) -> None:
        super().set_transition(matrix)
        self.corrected.assign(True)

    def selection_probabilities(self):
        return tf.where(tf.convert_to_tensor(self.corrected), self._after, self._before)

    def sample(self, seed):
        return _fixed_selection(self.selection_probabilities())


@keras.saving.register_keras_serializable(package="slf_tf")
class UniformLoss(CombinedLoss):
    """The mean of the bag."""

    strategy = "uniform"

    def sample(self, seed):
        return _fixed_selection(tf.fill([self.num_losses], 1.0 / self.num_losses))


@keras.saving.register_keras_serializable(package="slf_tf")
class UncertaintyLoss(CombinedLoss):
    """Kendall, Gal & Cipolla 2018: ``sum_i exp(-s_i) L_i / 2 + s_i / 2``, learned ``s_i = log sigma_i^2``.

    The main network sees coefficients ``c_i = exp(-s_i) / 2``; ``s`` is trained on
    the same objective over the training batch's candidate losses.
    """

    strategy = "uncertainty"

    def __init__(self, losses: Sequence[str], **kwargs: Any):
        super().__init__(losses, **kwargs)
        self.log_variance = keras.Variable(tf.zeros([self.num_losses]), name="log_variance")

    @property
    def decision_variables(self):
        return [self.log_variance]

    def sample(self, seed):
        c = 0.5 * tf.exp(-tf.convert_to_tensor(self.log_variance))
        gate = tf.ones_like(c)
        return selection.Selection(c, gate, c, gate, None)

    def decision_loss(self, choice, lookahead):
        s = tf.convert_to_tensor(self.log_variance)
        losses = tf.stop_gradient(tf.cast(lookahead.candidate_losses, s.dtype))
        return tf.reduce_sum(0.5 * tf.exp(-s) * losses + 0.5 * s)


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
        self.previous_scale = _state(np.ones(self.num_losses, np.float32), name="previous_scale")

    @property
    def state_variables(self):
        return super().state_variables + [self.previous_scale]

    def sample(self, seed):
        previous = tf.convert_to_tensor(self.previous_scale)
        slopes = (self.loss_scale - previous) / tf.maximum(previous, 1e-12)
        c = tf.nn.softmax(self.beta * slopes)
        return selection.Selection(c, tf.ones_like(c), c, tf.ones_like(c), None)

    def record(self, choice, coefficients, losses, finite, val_loss=None, enabled=True):
        # previous_scale <- the loss scale before this step's update (unchanged when disabled).
        keep = self.loss_scale if enabled is True else tf.where(enabled, self.loss_scale, self.previous_scale)
        with tf.control_dependencies([keep]):
            update = super().record(choice, coefficients, losses, finite, val_loss, enabled)
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
    "glc": GLCLoss,
}


def _parameters(cls: type) -> set[str]:
    names = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and issubclass(klass, CombinedLoss):
            names |= set(inspect.signature(klass.__init__).parameters) - {"self", "losses", "kwargs"}
    return names


def create_loss(strategy: str, losses: Sequence[str], **kwargs: Any) -> CombinedLoss:
    """A combined loss by strategy name; unknown names raise ``ValueError`` listing the known ones.

    Keyword arguments that only other strategies take (e.g. ``k`` for ``uniform``)
    are ignored, so one config can switch strategies; a keyword no strategy takes
    is an error.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown loss strategy {strategy!r}; known: {sorted(STRATEGIES)}.")
    every = set().union(*(_parameters(c) for c in STRATEGIES.values()))
    unknown = sorted(set(kwargs) - every)
    if unknown:
        raise ValueError(f"Unknown loss arguments {unknown}; known: {sorted(every)}.")
    cls = STRATEGIES[strategy]
    if strategy == "softmax":
        kwargs["k"] = "inf"
    allowed = _parameters(cls)
    return cls(losses, **{k: v for k, v in kwargs.items() if k in allowed})


from slf_tf import example_weighting  # noqa: E402,F401  (registers l2rw, meta_weight_net, joint)
