"""The SLF training step, shared by the trainer, :class:`slf_tf.SLFModel` and the Keras callback.

One call runs, per replica (under ``strategy.run`` or Keras' ``fit``):

  1. sample ``c(v)``: K draws from the decision network, the B() gate, the weights;
  2. forward the train batch and its candidate losses; the main gradient;
  3. the virtual step ``w' = w - P g`` and ``dJ/dc`` (the same forward/backward serves both);
  4. the decision gradient ``dJ/dv`` through the sampler (or the strategy's own rule);
  5. guarded updates: the main optimizer, then the decision optimizer;
  6. bookkeeping, and metrics that are global under a strategy.

The math and the reasons are in docs/design.md ("The step").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import keras
import tensorflow as tf

from slf_tf import distributed, hypergrad, metrics, rng
from slf_tf.heads import HeadLosses
from slf_tf.stochastic_loss import CombinedLoss

__all__ = [
    "DecisionSettings",
    "StepResult",
    "TrainStep",
    "coefficient_gradient",
    "guarded_apply",
    "optimizer_in_scope",
    "make_forward",
    "make_validation",
]


@dataclasses.dataclass(frozen=True)
class DecisionSettings:
    """How the decision network is updated (``config.decision`` in the trainer's configs).

    Attributes:
      every: update the decision network every n main steps.
      lookahead_lr: eta of the SGD virtual step.
      virtual_step: ``optimizer`` (the main optimizer's own per-weight step sizes,
        :func:`slf_tf.hypergrad.preconditioned_step`; SGD, Adam, AdamW, RMSprop) or
        ``sgd`` (``w' = w - lookahead_lr * g``, any optimizer).
      method: ``auto`` (``exact``), ``exact`` (nested tapes; reverse over reverse for per-example
        scores), ``jvp`` (forward mode) or ``finite_difference``.
      entropy_weight: weight of an entropy bonus on the selection distribution.
      fd_epsilon: the finite-difference step, relative to the direction's norm.
      trust_region: scale the virtual step by ``s`` in [2^-20, 1], halved after a decision update
        whose step overshot (``J`` rising at ``w'``) and doubled after one that did not; ``dJ/dc``
        is read per unit of step (divided by ``s``). ``False`` is the paper's full one-step
        lookahead; ``None`` (the default) is the strategy's own choice,
        ``loss.trust_region_by_default``: on for the loss-selecting strategies, off for
        Meta-Weight-Net (measured, README). docs/design.md, "The trust region".
    """

    every: int = 1
    lookahead_lr: float = 0.05
    virtual_step: str = "optimizer"
    method: str = "auto"
    entropy_weight: float = 0.0
    fd_epsilon: float = 1e-3
    trust_region: bool | None = None

    @classmethod
    def from_keywords(cls, owner: str, **settings: Any) -> DecisionSettings:
        """The settings from keyword arguments; an unknown keyword is a ValueError naming it and the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"{owner} got unknown decision settings {unknown}; known: {known}.")
        return cls(**settings)

    def __post_init__(self):
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"decision every must be an integer >= 1; got {self.every!r}.")
        if not self.lookahead_lr > 0:
            raise ValueError(f"lookahead_lr must be > 0; got {self.lookahead_lr!r}.")
        if self.virtual_step not in hypergrad.VIRTUAL_STEPS:
            raise ValueError(f"Unknown virtual_step {self.virtual_step!r}; known: {list(hypergrad.VIRTUAL_STEPS)}.")
        hypergrad.check_method(self.method)
        if not self.entropy_weight >= 0:
            raise ValueError(f"entropy_weight must be a number >= 0; got {self.entropy_weight!r}.")
        if not self.fd_epsilon > 0:
            raise ValueError(f"fd_epsilon must be > 0; got {self.fd_epsilon!r}.")
        if self.trust_region is not None and not isinstance(self.trust_region, bool):
            raise ValueError(
                f"trust_region must be True, False or None (the strategy's default); got {self.trust_region!r}."
            )

    def uses_trust_region(self, loss: Any) -> bool:
        """``trust_region``, or where it is None the strategy's default (``loss.trust_region_by_default``)."""
        return bool(loss.trust_region_by_default) if self.trust_region is None else self.trust_region


class StepResult(NamedTuple):
    """What a step returns: global metrics, and this replica's predictions on the train batch."""

    metrics: dict[str, tf.Tensor]
    predictions: tf.Tensor


def _global_size(x: Any, given: int | None) -> tf.Tensor:
    local = tf.cast(tf.shape(tf.nest.flatten(x)[0])[0], tf.float32)
    return tf.constant(float(given)) if given else distributed.all_sum(local)


def make_forward(
    model: keras.Model,
    loss: CombinedLoss,
    x: Any,
    y: Any,
    global_batch: Any,
    fallback: tf.Tensor,
    sample_weight: Any = None,
) -> hypergrad.ForwardFn:
    """``(weights, c) -> TrainForward``: the train batch's forward, candidate losses and ``sum_i c_i L_i``.

    ``fallback``: the weights that take over if every selected candidate is
    non-finite; ``sample_weight`` ``[batch]`` or per position ``[batch, P]``, and the
    Keras mask of the predictions, weigh the candidate losses as Keras does
    (:meth:`slf_tf.CombinedLoss.candidate_losses`).
    """
    non_trainable = [v.value for v in model.non_trainable_variables]
    replicas = distributed.num_replicas()

    def forward(weights, coefficients) -> hypergrad.TrainForward:
        pred, new_non_trainable, regularisation = model.stateless_call(
            weights, non_trainable, x, training=True, return_losses=True
        )
        per_example, finite = loss.candidate_losses(y, pred, sample_weight)  # weighted (and masked) per position
        combined, c = loss.combine(per_example, finite, coefficients, fallback)
        example_weights = tf.stop_gradient(loss.forward_example_weights(combined))
        n = tf.cast(global_batch, per_example.dtype)
        objective = tf.reduce_sum(example_weights * combined) / n
        reg = tf.cast(tf.add_n(regularisation), objective.dtype) / replicas if regularisation else tf.zeros([], n.dtype)
        losses = tf.reduce_sum(per_example, axis=0) / n
        return hypergrad.TrainForward(
            objective + reg, losses, c, finite, pred, new_non_trainable, per_example, combined, example_weights, reg, n
        )

    return forward


def make_validation(model: keras.Model, loss: CombinedLoss, x_val: Any, y_val: Any, global_batch: Any):
    """``weights -> J``: this replica's partial validation loss (inference mode) at the given weights."""
    non_trainable = [v.value for v in model.non_trainable_variables]

    def validation(weights) -> tf.Tensor:
        pred, _ = model.stateless_call(weights, non_trainable, x_val, training=False)
        per_example = loss.validation_loss(y_val, pred)
        return tf.reduce_sum(per_example) / tf.cast(global_batch, per_example.dtype)

    return validation


def optimizer_in_scope(optimizer: Any, strategy: tf.distribute.Strategy, default: float = 0.02):
    """``optimizer`` (an instance, a name, or None for Adam) with its variables under ``strategy``.

    A name or None gets the learning rate ``default`` (the decision's, not Keras'
    1e-3, which leaves SLF's decision near uniform for hundreds of steps).
    An optimizer made outside the strategy's scope has plain, unmirrored variables
    that every replica would update in turn; an unbuilt one is recreated from its
    config inside the scope (a built one is returned as it is).
    """
    with strategy.scope():
        if optimizer is None:
            return keras.optimizers.Adam(default)
        if isinstance(optimizer, str):
            return keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": default}})
        if strategy.num_replicas_in_sync > 1 and not optimizer.built:
            return type(optimizer).from_config(optimizer.get_config())
        return optimizer


def coefficient_gradient(
    model: keras.Model,
    loss: CombinedLoss,
    x: Any,
    y: Any,
    x_val: Any,
    y_val: Any,
    coefficients: tf.Tensor,
    *,
    lookahead_lr: float,
    method: str = "exact",
    fd_epsilon: float = 1e-3,
) -> hypergrad.Lookahead:
    """``dJ/dc`` and ``J(w')`` at given coefficients, with the SGD virtual step (for analysis and tests)."""
    weights = [v.value for v in model.trainable_variables]
    forward = make_forward(model, loss, x, y, _global_size(x, None), tf.ones_like(coefficients))
    val_fn = make_validation(model, loss, x_val, y_val, _global_size(x_val, None))
    step = hypergrad.sgd_step(lookahead_lr, len(weights))
    return hypergrad.lookahead(forward, val_fn, weights, coefficients, step, method=method, fd_epsilon=fd_epsilon)


def guarded_apply(optimizer, grads: list, variables: list, allowed: Any = True) -> tf.Tensor:
    """Applies ``grads`` only if they are finite on every replica (and ``allowed``); returns the skip flag.

    A skipped update leaves the weights, the optimizer's moments and its iteration
    count untouched. One sum per gradient: NaN and Inf survive summation.
    """
    total = tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads])
    ok = distributed.all_true(tf.logical_and(tf.math.is_finite(total), allowed)[None])[0]
    distributed.apply_if(ok, optimizer, grads, variables)
    return 1.0 - tf.cast(ok, tf.float32)


class TrainStep:
    """One SLF training step per replica; owns both optimizers (both built before the first trace).

    Args:
      model: the main network (Keras 3), called functionally.
      loss: the combined loss (any strategy), or :class:`slf_tf.heads.HeadLosses` (a loss per output).
      main_optimizer, decision_optimizer: Keras optimizers.
      settings: :class:`DecisionSettings`.
      task: ``classification`` | ``regression`` | ``binary``, for the metrics, or ``{output: kind}`` for a
        model with several outputs (:func:`slf_tf.metrics.output_sums`); None: the loss only (``SLFModel``
        has Keras compute the compiled metrics).
      global_batch, global_val_batch: global batch sizes if fixed (else each step
        counts its examples over replicas).
    """

    def __init__(
        self,
        model: keras.Model,
        loss: CombinedLoss | HeadLosses,
        main_optimizer: keras.optimizers.Optimizer,
        decision_optimizer: keras.optimizers.Optimizer,
        settings: DecisionSettings = DecisionSettings(),
        *,
        task: str | Mapping[str, str] | None = "classification",
        global_batch: int | None = None,
        global_val_batch: int | None = None,
    ):
        self.model, self.loss, self.settings, self.task = model, loss, settings, task
        self.main_optimizer, self.decision_optimizer = main_optimizer, decision_optimizer
        self.global_batch, self.global_val_batch = global_batch, global_val_batch
        # Built before the first trace: built lazily they retrace, and the mirrored step then fails.
        if not main_optimizer.built:
            main_optimizer.build(model.trainable_variables)
        if loss.needs_lookahead and settings.virtual_step == "optimizer":
            hypergrad.check_preconditioned(main_optimizer)
        self.method = hypergrad.resolve_method(settings.method, loss.lookahead_from_current)
        self.trust_region = settings.uses_trust_region(loss)
        if loss.decision_variables and not decision_optimizer.built:
            decision_optimizer.build(loss.decision_variables)

    def _virtual_step(self, weights):
        """The virtual step (or a function of the global gradient giving it), times the trust region's scale."""
        scale = tf.convert_to_tensor(self.loss.virtual_scale) if self.trust_region else None
        if self.settings.virtual_step == "sgd":
            step = hypergrad.sgd_step(self.settings.lookahead_lr, len(weights))
            return step if scale is None else step.scaled(scale)
        variables = self.model.trainable_variables

        def preconditioned(grads):
            step = hypergrad.preconditioned_step(self.main_optimizer, variables, grads)
            return step if scale is None else step.scaled(scale)

        return preconditioned

    def _trust_region(self, look: hypergrad.Lookahead) -> tuple[hypergrad.Lookahead, tf.Operation, tf.Tensor]:
        """``dJ/dc`` (and the scores) per unit of the scaled step, the scale's update, and the scale used."""
        scale = tf.convert_to_tensor(self.loss.virtual_scale)
        coefficients = look.forward.coefficients
        update = self.loss.virtual_scale.assign(
            hypergrad.next_trust_scale(scale, coefficients, look.coefficient_gradient)
        )
        per_unit = lambda t: None if t is None else t / tf.cast(scale, t.dtype)  # noqa: E731
        look = look._replace(
            coefficient_gradient=per_unit(look.coefficient_gradient), example_scores=per_unit(look.example_scores)
        )
        return look, update, scale

    def _look(self, forward, weights, c, x_val, y_val, with_hypergradient: bool) -> hypergrad.Lookahead:
        """The forward and main gradient; with the hypergradient, also the virtual step and dJ/dc."""
        if not with_hypergradient:
            return hypergrad.main_gradient(forward, weights, c)
        val_fn = make_validation(self.model, self.loss, x_val, y_val, _global_size(x_val, self.global_val_batch))
        kwargs = {"method": self.method, "fd_epsilon": self.settings.fd_epsilon}
        if self.loss.reweights_from_lookahead:  # example weights first, then the main gradient
            return hypergrad.reweighted_lookahead(
                forward,
                val_fn,
                weights,
                c,
                self._virtual_step(weights),
                self.loss.lookahead_example_weights,
                from_current=self.loss.lookahead_from_current,
                **kwargs,
            )
        return hypergrad.lookahead(
            forward,
            val_fn,
            weights,
            c,
            self._virtual_step(weights),
            with_val_loss_before=self.loss.needs_val_loss_before,
            with_example_scores=self.loss.needs_example_scores,
            **kwargs,
        )

    def _decision_gradient(self, tape, values, choice, look) -> list[tf.Tensor]:
        """dJ/dv through the sampler (or the strategy's own rule), minus the entropy bonus's gradient."""
        with tape:  # re-entered: the sampling of phase 1 is on it
            objective = self.loss.decision_loss(choice, look)
            if self.settings.entropy_weight:
                objective -= self.settings.entropy_weight * self.loss.selection_entropy()
            objective /= distributed.num_replicas()  # the optimizer sums the replicas' gradients
        return tape.gradient(objective, values, unconnected_gradients="zero")

    def __call__(self, step, x, y, x_val=None, y_val=None, sample_weight=None, *, update_decision: bool) -> StepResult:
        """One step (``update_decision``, a Python bool, makes two traced variants); returns global metrics."""
        loss, model = self.loss, self.model
        weights = [v.value for v in model.trainable_variables]
        decision_values = [v.value for v in loss.decision_variables]
        learn = update_decision and bool(decision_values)
        # Example weights from the lookahead (l2rw, joint) need it on every step, with or without a decision update.
        hypergradient = (learn and loss.needs_lookahead) or loss.reweights_from_lookahead
        # 1. Sample the coefficients c(v): K draws from the decision network, the B() gate, the weights.
        with tf.GradientTape(watch_accessed_variables=False) as decision_tape:
            decision_tape.watch(decision_values)
            choice = loss.sample(rng.step_seed(loss.seed, step))
        c = tf.stop_gradient(choice.coefficients)
        # 2-3. Forward the train batch and its candidate losses; the main gradient; then the virtual
        #      step w' = w - P g and dJ/dc (one forward/backward of the train batch serves all three).
        forward = make_forward(model, loss, x, y, _global_size(x, self.global_batch), choice.weights, sample_weight)
        look = self._look(forward, weights, c, x_val, y_val, hypergradient)
        trust = learn and loss.needs_lookahead and self.trust_region
        if trust:  # dJ/dc per unit of step; the scale halves after an overshoot, else doubles (<= 1)
            look, trust_update, out_scale = self._trust_region(look)
        # 4. The decision gradient dJ/dv.
        if learn:
            decision_grads = self._decision_gradient(decision_tape, decision_values, choice, look)
        # 5. Guarded updates: the main optimizer, then the decision optimizer (each skipped if non-finite).
        any_finite = tf.reduce_any(look.forward.finite)
        main_skipped = guarded_apply(self.main_optimizer, look.main_gradients, model.trainable_variables, any_finite)
        out = {"main_skipped": main_skipped}
        for variable, value in zip(model.non_trainable_variables, look.forward.non_trainable, strict=True):
            variable.assign(value)  # e.g. batch-norm statistics of the training forward
        if learn:
            out["decision_skipped"] = guarded_apply(self.decision_optimizer, decision_grads, loss.decision_variables)
            out["hypergrad_norm"] = tf.linalg.global_norm(decision_grads) * distributed.num_replicas()
        if hypergradient:
            out["val_loss_lookahead"], out["scores"] = look.val_loss, -look.coefficient_gradient
        if trust:
            out["virtual_scale"] = out_scale
        if look.example_weights is not None:  # the share of the batch that L2RW's rule keeps (weight > 0)
            kept = tf.reduce_sum(tf.cast(look.example_weights > 0, tf.float32))
            out["examples_kept"] = distributed.all_sum(kept) / _global_size(x, self.global_batch)
        # 6. Bookkeeping (the loss's state; step += 1) and the global metrics.
        raw = loss.unnormalize(look.candidate_losses)
        val_loss = look.val_loss if hypergradient else None
        record = loss.record(choice, look.forward.coefficients, raw, look.forward.finite, val_loss)
        with tf.control_dependencies([record, trust_update] if trust else [record]):
            out.update(self._metrics(look, y), candidate_losses=raw)
            return StepResult({k: tf.identity(v) for k, v in out.items()}, look.forward.predictions)

    def decide(self, step: Any, x: Any, y: Any, x_val: Any, y_val: Any) -> dict[str, tf.Tensor]:
        """A decision update alone, at the current weights (the Keras callback's path; no main update).

        It re-draws step ``step``'s choice (same seed, so the same ``c`` the main step
        used if that step's weights are current) and applies only the decision gradient.
        """
        loss = self.loss
        weights, values = [v.value for v in self.model.trainable_variables], [v.value for v in loss.decision_variables]
        with tf.GradientTape(watch_accessed_variables=False) as decision_tape:
            decision_tape.watch(values)
            choice = loss.sample(rng.step_seed(loss.seed, step))
        forward = make_forward(self.model, loss, x, y, _global_size(x, self.global_batch), choice.weights)
        look = self._look(forward, weights, tf.stop_gradient(choice.coefficients), x_val, y_val, loss.needs_lookahead)
        trust = loss.needs_lookahead and self.trust_region
        if trust:
            look, trust_update, scale = self._trust_region(look)
        grads = self._decision_gradient(decision_tape, values, choice, look)
        out = {"decision_skipped": guarded_apply(self.decision_optimizer, grads, loss.decision_variables)}
        out["hypergrad_norm"] = tf.linalg.global_norm(grads) * distributed.num_replicas()
        if loss.needs_lookahead:
            out["val_loss_lookahead"], out["scores"] = look.val_loss, -look.coefficient_gradient
            updates = [loss.record_validation_loss(look.val_loss)]
            if trust:
                out["virtual_scale"] = scale
                updates.append(trust_update)
            with tf.control_dependencies(updates):
                return {k: tf.identity(v) for k, v in out.items()}
        return out

    def _metrics(self, look: hypergrad.Lookahead, y: Any) -> dict[str, tf.Tensor]:
        """The objective and the task metrics of the train batch, summed over replicas in one all-reduce."""
        pred = look.forward.predictions
        if isinstance(self.task, Mapping):  # several outputs: {output: kind}
            sums = metrics.output_sums(self.task, y, pred)
        else:
            sums = metrics.task_sums(self.task, y, pred) if self.task else {}
        n = _global_size(y, self.global_batch)
        names = ["loss", *sums]
        values = [look.forward.objective] + [tf.cast(v, tf.float32) / n for v in sums.values()]
        packed = distributed.all_sum(tf.stack([tf.cast(v, tf.float32) for v in values]))
        return {name: packed[i] for i, name in enumerate(names)}
