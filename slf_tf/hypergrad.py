"""The validation hypergradient: how the next validation loss depends on the coefficients ``c``.

A virtual step of the main weights with the step's coefficients,

    w'(c) = w - P * grad_w sum_i c_i L_i(w)      (P: SGD's eta, or the main optimizer's preconditioner)
    J(c)  = L_val(w'(c))
    dJ/dc_i = -<P grad_w L_i(w), grad_w L_val(w')>

then ``dJ/dv = sum_i dJ/dc_i dc_i/dv`` through the sampler (in the training step).
Three ways to get ``dJ/dc``, tested to agree (docs/design.md, "The hypergradient");
``auto`` (the default) is ``exact``, the fastest of the exact ones:

* ``jvp``: ``u = P grad L_val(w')``, then one forward-mode pass of the
  train batch (``tf.autodiff.ForwardAccumulator`` around ``stateless_call``) gives
  the directional derivative ``D[j, i] = <grad l_ji(w), u>`` of every example's
  every candidate loss at once; ``dJ/dc_i = -sum_j e_j D[j, i] / n``. Exact, no
  second-order graph, and ``D`` is what the example-weighting strategies need.
* ``exact`` (the default: faster than ``jvp`` in TF, whose forward mode transposes
  backward functions): nested GradientTapes through the virtual step; the forwards
  are functional (``model.stateless_call``), so no variable is assigned inside a
  tape. For ``D`` (:func:`reweighted_lookahead`) the main gradient is taken as the
  vector-Jacobian product ``g(V) = sum_ji V_ji grad l_ji`` at ``V_ji = e_j c_i / n``
  (the objective's own weights), with ``V`` watched: ``D = -dJ(w - P g(V))/dV``,
  reverse over reverse, the same numbers as ``jvp`` for less work.
* ``finite_difference``: ``D`` by central differences of the per-example losses
  along ``u``, from two forwards of the train batch,
  ``[l(w + eps u) - l(w - eps u)] / 2 eps`` with ``eps = fd_epsilon / ||u||``;
  error O(eps^2).

:func:`reweighted_lookahead` is the step of the strategies that weight
*examples* from ``D`` (Learning to Reweight Examples, and SLF with it): the main
gradient is taken after the lookahead, with the example weights it gives.

Everything here is a pure function of tensors: it returns NamedTuples and never
touches an optimizer or a variable (cf. big_vision's ``gsam_gradient``). The main
gradient is computed once and returned, so the training step applies it: one
forward/backward of the train batch serves the main update and the hypergradient.
Under a multi-replica strategy, gradients are this replica's partial sums (the
optimizers all-reduce them); ``coefficient_gradient`` and the losses are global.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import keras
import tensorflow as tf

from slf_tf import distributed

__all__ = [
    "METHODS",
    "VIRTUAL_STEPS",
    "Lookahead",
    "TrainForward",
    "VirtualStep",
    "check_method",
    "check_preconditioned",
    "gradient_from_scores",
    "lookahead",
    "resolve_method",
    "main_gradient",
    "next_trust_scale",
    "TRUST_REGION_FLOOR",
    "reweighted_lookahead",
    "preconditioned_step",
    "sgd_step",
]

METHODS = ("auto", "exact", "jvp", "finite_difference")


def resolve_method(method: str, from_current: bool = False) -> str:
    """``auto``: ``exact``, or ``jvp`` for a lookahead taken at ``w`` itself (``from_current``, L2RW).

    Every method gives ``dJ/dc`` and the scores ``D``. Reverse over reverse measured
    faster than forward mode through a virtual step; at ``w`` forward mode needs no
    backward of the train batch before the lookahead and shares its forward with the
    main gradient's (README, "Step overhead").
    """
    check_method(method)
    if method == "auto":
        return "jvp" if from_current else "exact"
    return method


VIRTUAL_STEPS = ("sgd", "optimizer")


def check_method(method: str) -> None:
    """Raises unless ``method`` is known."""
    if method not in METHODS:
        raise ValueError(f"Unknown hypergradient method {method!r}; known: {list(METHODS)}.")


class TrainForward(NamedTuple):
    """What a forward of the train batch gives (see the training step's ``forward``)."""

    objective: tf.Tensor  # this replica's partial sum_i c_i L_i (+ regularisation), scalar
    candidate_losses: tf.Tensor  # this replica's partial batch means L_i, [N]
    coefficients: tf.Tensor  # the masked c the objective used, [N]
    finite: tf.Tensor  # [N], the same on every replica
    predictions: tf.Tensor  # the model's outputs on the batch
    non_trainable: list  # the model's non-trainable values after the forward (e.g. batch-norm statistics)
    per_example: tf.Tensor  # this replica's per-example candidate losses l_ji, [batch, N]
    combined: tf.Tensor  # this replica's per-example sum_i c_i l_ji, [batch]
    example_weights: tf.Tensor  # e_j of the objective sum_j e_j combined_j / n (+ regularisation), [batch]
    regularisation: tf.Tensor  # this replica's share of the model's regularisation losses, scalar
    global_batch: tf.Tensor  # n, the examples over all replicas, scalar


ForwardFn = Callable[[Sequence[tf.Tensor], tf.Tensor], TrainForward]
ValidationFn = Callable[[Sequence[tf.Tensor]], tf.Tensor]


class Lookahead(NamedTuple):
    """The main gradient and, when computed, the hypergradient's pieces."""

    forward: TrainForward
    main_gradients: list  # this replica's partial grad_w of the objective
    candidate_losses: tf.Tensor  # global batch means L_i, [N]
    coefficient_gradient: tf.Tensor  # dJ/dc, [N] (zeros without a lookahead)
    val_loss: tf.Tensor  # J(w') (0 without a lookahead)
    val_loss_before: tf.Tensor  # J(w) (0 unless asked for)
    example_scores: tf.Tensor | None = None  # D [batch, N] = <grad l_ji, P grad J(w')> (reweighted_lookahead,
    # or lookahead's jvp and finite_difference)
    example_weights: tf.Tensor | None = None  # the e [batch] the main gradient used, if set by the lookahead


class VirtualStep(NamedTuple):
    """``w' = w - scale * g`` per variable; ``scale`` (a scalar or elementwise) carries no gradient."""

    scales: list

    def apply(self, weights: Sequence[tf.Tensor], grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return [w - tf.cast(s, w.dtype) * g for w, s, g in zip(weights, self.scales, grads, strict=True)]

    def scaled(self, factor: tf.Tensor) -> VirtualStep:
        """The same step, ``factor`` times as long (the trust region's scale)."""
        return VirtualStep([s * tf.cast(factor, tf.float32) for s in self.scales])


#: The trust region on the virtual step: its scale is halved after a step that overshot, doubled
#: (up to 1, the optimizer's own step) after one that did not, and never goes below this floor.
TRUST_REGION_FLOOR = 2.0**-20


def next_trust_scale(scale: tf.Tensor, coefficients: tf.Tensor, coefficient_gradient: tf.Tensor) -> tf.Tensor:
    """The virtual step's next scale: halved if ``J`` still rose at ``w'`` along the step, else doubled (<= 1).

    ``-sum_i c_i dJ/dc_i = <P g, grad J(w')>`` (the objective is linear in ``c``) is
    the slope of ``J`` along the step at its end: negative means ``w'`` lies past the
    validation loss's minimum along the step (or the step climbs from the start).
    A non-finite slope leaves the scale as it is.
    """
    scale = tf.convert_to_tensor(scale, tf.float32)
    slope = -tf.reduce_sum(tf.cast(coefficients, tf.float32) * tf.cast(coefficient_gradient, tf.float32))
    moved = tf.clip_by_value(tf.where(slope > 0.0, 2.0 * scale, 0.5 * scale), TRUST_REGION_FLOOR, 1.0)
    return tf.where(tf.math.is_finite(slope), moved, scale)


def sgd_step(learning_rate: float, num_variables: int) -> VirtualStep:
    """Plain SGD with step size ``learning_rate`` (the lookahead of the SLF paper)."""
    return VirtualStep([tf.constant(learning_rate, tf.float32)] * num_variables)


def check_preconditioned(optimizer: keras.optimizers.Optimizer) -> None:
    """Raises early unless :func:`preconditioned_step` knows this optimizer's step sizes."""
    opt = getattr(optimizer, "inner_optimizer", optimizer)  # unwrap a LossScaleOptimizer
    if not isinstance(
        opt, keras.optimizers.SGD | keras.optimizers.Adam | keras.optimizers.AdamW | keras.optimizers.RMSprop
    ):
        raise ValueError(
            f"virtual_step='optimizer' (the default) supports SGD, Adam, AdamW and RMSprop; got "
            f"{type(opt).__name__}. Use virtual_step='sgd' (the step w - lookahead_lr * g) with this optimizer."
        )


def preconditioned_step(optimizer: keras.optimizers.Optimizer, variables: Sequence, grads: Sequence) -> VirtualStep:
    """The step the main optimizer will take along a gradient, linearised: its per-weight step sizes.

    Adam/AdamW: ``lr / (sqrt(v_hat) + eps)`` with the second moment updated by this
    step's (global) gradient ``grads``; RMSprop: ``lr / (sqrt(v) + eps)``; SGD with
    momentum m: ``lr / (1 - m)``, the long-run displacement of one gradient. Momentum
    carries a gradient over later steps with total weight 1, so the scale is the
    optimizer's whole response to this step's gradient, not its first share.
    """
    check_preconditioned(optimizer)
    opt = getattr(optimizer, "inner_optimizer", optimizer)  # unwrap a LossScaleOptimizer
    lr = tf.cast(opt._get_current_learning_rate(), tf.float32)
    grads = [tf.stop_gradient(tf.cast(g, tf.float32)) for g in grads]
    if isinstance(opt, keras.optimizers.SGD):
        return VirtualStep([lr / (1.0 - float(opt.momentum))] * len(grads))
    if isinstance(opt, keras.optimizers.Adam | keras.optimizers.AdamW):
        t = tf.cast(opt.iterations + 1, tf.float32)
        correction = 1.0 - tf.pow(tf.cast(opt.beta_2, tf.float32), t)
        scales = []
        for var, g in zip(variables, grads, strict=True):
            v = tf.convert_to_tensor(opt._velocities[opt._get_variable_index(var)])
            v_new = opt.beta_2 * tf.cast(v, tf.float32) + (1.0 - opt.beta_2) * tf.square(g)
            scales.append(lr / (tf.sqrt(v_new / correction) + opt.epsilon))
        return VirtualStep(scales)
    scales = []  # RMSprop
    for var, g in zip(variables, grads, strict=True):
        v = tf.convert_to_tensor(opt._velocities[opt._get_variable_index(var)])
        v_new = opt.rho * tf.cast(v, tf.float32) + (1.0 - opt.rho) * tf.square(g)
        scales.append(lr / (tf.sqrt(v_new) + opt.epsilon))
    return VirtualStep(scales)


def _gradient(tape: tf.GradientTape, target: tf.Tensor, sources: Sequence) -> list[tf.Tensor]:
    """Dense gradients: an embedding's ``IndexedSlices`` become tensors, which the virtual step can scale."""
    grads = tape.gradient(target, sources, unconnected_gradients="zero")
    return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]


def _forward_and_gradient(forward_fn: ForwardFn, weights, coefficients) -> tuple[TrainForward, list]:
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(weights)
        forward = forward_fn(weights, coefficients)
    return forward, _gradient(tape, forward.objective, weights)


def main_gradient(forward_fn: ForwardFn, weights: Sequence, coefficients: tf.Tensor) -> Lookahead:
    """The forward and the main gradient only (steps without a decision update)."""
    forward, grads = _forward_and_gradient(forward_fn, weights, coefficients)
    zero = tf.zeros([], tf.float32)
    losses = distributed.all_sum(forward.candidate_losses)
    return Lookahead(forward, grads, losses, tf.zeros_like(coefficients), zero, zero)


def lookahead(
    forward_fn: ForwardFn,
    val_fn: ValidationFn,
    weights: Sequence,
    coefficients: tf.Tensor,
    virtual_step: VirtualStep | Callable[[list], VirtualStep],
    *,
    method: str = "exact",
    fd_epsilon: float = 1e-3,
    with_val_loss_before: bool = False,
    with_example_scores: bool = False,
) -> Lookahead:
    """The forward, the main gradient, the virtual step and ``dJ/dc``, from one forward/backward of the batch.

    Args:
      forward_fn: ``(weights, c) -> TrainForward`` on the train batch.
      val_fn: ``weights -> this replica's partial J`` on the validation batch.
      weights: the main network's trainable values.
      coefficients: ``c [N]``, without a gradient path to the decision network.
      virtual_step: a :class:`VirtualStep`, or a function of the global main
        gradient returning one (:func:`preconditioned_step`).
      method: ``exact`` (``auto``), ``jvp`` or ``finite_difference``.
      fd_epsilon: the finite-difference step, relative to ``||P grad J(w')||``.
      with_val_loss_before: also compute ``J(w)`` (the REINFORCE reward).
      with_example_scores: also give the scores ``D`` with ``exact`` (``jvp`` and
        ``finite_difference`` always do).
    """
    method = resolve_method(method)
    scores = None
    if method == "exact" and with_example_scores:
        forward, _, grads, j, scores = _scores_reverse_over_reverse(
            forward_fn, val_fn, weights, coefficients, virtual_step, from_current=False
        )
        d_j_dc = gradient_from_scores(scores, forward.example_weights, forward.global_batch)
        return _finish(forward, grads, d_j_dc, j, scores, val_fn, weights, with_val_loss_before)
    with tf.GradientTape(watch_accessed_variables=False) as c_tape:
        if method == "exact":
            c_tape.watch(coefficients)
        forward, grads = _forward_and_gradient(forward_fn, weights, coefficients)
        total = distributed.all_sum(grads)
        step = virtual_step if isinstance(virtual_step, VirtualStep) else virtual_step(total)
        virtual = step.apply(weights, total)
        if method == "exact":
            j = val_fn(virtual)
    if method == "exact":
        d_j_dc = distributed.all_sum(c_tape.gradient(j, coefficients, unconnected_gradients="zero"))
    else:
        j, direction = _validation_direction(val_fn, weights, virtual, step)
        scores = _example_scores(forward_fn, weights, coefficients, direction, method, fd_epsilon)
        d_j_dc = gradient_from_scores(scores, forward.example_weights, forward.global_batch)
    return _finish(forward, grads, d_j_dc, j, scores, val_fn, weights, with_val_loss_before)


def _finish(forward, grads, d_j_dc, j, scores, val_fn, weights, with_val_loss_before: bool) -> Lookahead:
    before = distributed.all_sum(val_fn(weights)) if with_val_loss_before else tf.zeros([], j.dtype)
    losses = distributed.all_sum(forward.candidate_losses)
    return Lookahead(forward, grads, losses, d_j_dc, distributed.all_sum(j), before, scores)


def gradient_from_scores(scores: tf.Tensor, example_weights: tf.Tensor, global_batch: tf.Tensor) -> tf.Tensor:
    """``dJ/dc_i = -sum_j e_j D[j, i] / n`` (global), from this replica's scores ``D [batch, N]``."""
    weighted = tf.linalg.matvec(scores, tf.cast(example_weights, scores.dtype), transpose_a=True)
    return -distributed.all_sum(weighted) / tf.cast(global_batch, scores.dtype)


def _validation_direction(val_fn, weights, virtual, step: VirtualStep) -> tuple[tf.Tensor, list]:
    """``(J(w') partial, u = P grad J(w') global)``: one forward/backward of the validation batch."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(virtual)
        j = val_fn(virtual)
    grads = distributed.all_sum(_gradient(tape, j, virtual))
    return j, [-d for d in step.apply([tf.zeros_like(w) for w in weights], grads)]


def _example_scores(forward_fn, weights, coefficients, direction, method: str, fd_epsilon: float) -> tf.Tensor:
    """``D [batch, N] = <grad_w l_ji(w), u>`` for this replica's examples: forward mode, or central differences."""
    if method == "jvp":
        with tf.autodiff.ForwardAccumulator(weights, direction) as accumulator:
            per_example = forward_fn(weights, coefficients).per_example
        return accumulator.jvp(per_example, unconnected_gradients="zero")
    norm = tf.linalg.global_norm(direction)
    eps = tf.cast(fd_epsilon, norm.dtype) / tf.maximum(norm, tf.cast(1e-12, norm.dtype))
    plus = [w + tf.cast(eps, w.dtype) * d for w, d in zip(weights, direction, strict=True)]
    minus = [w - tf.cast(eps, w.dtype) * d for w, d in zip(weights, direction, strict=True)]
    l_plus = forward_fn(plus, coefficients).per_example
    l_minus = forward_fn(minus, coefficients).per_example
    return (l_plus - l_minus) / (2.0 * tf.cast(eps, l_plus.dtype))


ExampleWeightsFn = Callable[[tf.Tensor, TrainForward], tf.Tensor]


def reweighted_lookahead(
    forward_fn: ForwardFn,
    val_fn: ValidationFn,
    weights: Sequence,
    coefficients: tf.Tensor,
    virtual_step: VirtualStep | Callable[[list], VirtualStep],
    example_weights_fn: ExampleWeightsFn,
    *,
    from_current: bool,
    method: str = "auto",
    fd_epsilon: float = 1e-3,
) -> Lookahead:
    """The lookahead of example weighting: scores ``D``, example weights from them, then the main gradient.

    ``from_current`` (Learning to Reweight Examples: weights perturbed around
    zero) evaluates ``grad J`` at ``w`` itself; otherwise at ``w' = w - P g`` with
    ``g`` the gradient of the unweighted objective (the derivative at uniform
    weights, which SLF's ``dJ/dc`` also uses). ``example_weights_fn(D, forward)``
    returns this replica's weights ``e [batch]``; the main gradient is that of
    ``sum_j e_j combined_j / n + regularisation``, from the same forward (one
    forward, with one backward more than :func:`lookahead` unless ``from_current``).
    """
    method = resolve_method(method, from_current)
    if method == "exact":
        forward, tape, _, j, scores = _scores_reverse_over_reverse(
            forward_fn, val_fn, weights, coefficients, virtual_step, from_current
        )
    elif method == "jvp" and from_current:
        forward, tape, j, scores = _scores_forward_mode_at_w(forward_fn, val_fn, weights, coefficients, virtual_step)
    else:
        with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
            tape.watch(weights)
            forward = forward_fn(weights, coefficients)
        if from_current:
            zeros = [tf.zeros_like(w) for w in weights]
            step = virtual_step if isinstance(virtual_step, VirtualStep) else virtual_step(zeros)
            virtual = list(weights)
        else:
            total = distributed.all_sum(_gradient(tape, forward.objective, weights))
            step = virtual_step if isinstance(virtual_step, VirtualStep) else virtual_step(total)
            virtual = step.apply(weights, total)
        j, direction = _validation_direction(val_fn, weights, virtual, step)
        scores = _example_scores(forward_fn, weights, coefficients, direction, method, fd_epsilon)
    d_j_dc = gradient_from_scores(scores, forward.example_weights, forward.global_batch)
    example_weights = tf.stop_gradient(tf.cast(example_weights_fn(scores, forward), forward.combined.dtype))
    with tape:
        n = tf.cast(forward.global_batch, forward.combined.dtype)
        objective = tf.reduce_sum(example_weights * forward.combined) / n + forward.regularisation
    grads = _gradient(tape, objective, weights)
    del tape
    forward = forward._replace(objective=objective)
    losses = distributed.all_sum(forward.candidate_losses)
    zero = tf.zeros([], j.dtype)
    return Lookahead(forward, grads, losses, d_j_dc, distributed.all_sum(j), zero, scores, example_weights)


def _scores_forward_mode_at_w(forward_fn, val_fn, weights, coefficients, virtual_step):
    """``(forward, its persistent tape, J(w) partial, D)`` for a lookahead at ``w``: ``u = P grad J(w)`` first,
    then one forward of the train batch under the tape and the accumulator (its primal serves the main
    gradient, its tangent is ``D``: no second forward)."""
    zeros = [tf.zeros_like(w) for w in weights]
    step = virtual_step if isinstance(virtual_step, VirtualStep) else virtual_step(zeros)
    j, direction = _validation_direction(val_fn, weights, list(weights), step)
    with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
        tape.watch(weights)
        with tf.autodiff.ForwardAccumulator(weights, direction) as accumulator:
            forward = forward_fn(weights, coefficients)
    return forward, tape, j, accumulator.jvp(forward.per_example, unconnected_gradients="zero")


def _scores_reverse_over_reverse(forward_fn, val_fn, weights, coefficients, virtual_step, from_current: bool):
    """``(forward, its persistent tape, g(V), J(w') partial, D)``: ``D = -dJ(w - P g(V))/dV`` at the objective's ``V``.

    ``g(V) = sum_ji V_ji grad l_ji (+ grad of the regularisation)`` is the main
    gradient at ``V_ji = e_j c_i / n`` (the objective is linear in the ``l_ji``);
    ``from_current`` takes ``V = 0`` (weights perturbed around zero, so ``w' = w``).
    """
    with tf.GradientTape(watch_accessed_variables=False) as v_tape:
        with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
            tape.watch(weights)
            forward = forward_fn(weights, coefficients)
        per_example = forward.per_example
        if from_current:
            v = tf.zeros_like(per_example)
            targets, cotangents = [per_example], [v]
        else:
            n = tf.cast(forward.global_batch, per_example.dtype)
            e, c = (tf.cast(t, per_example.dtype) for t in (forward.example_weights, forward.coefficients))
            v = tf.stop_gradient(e[:, None] * c[None, :] / n)
            reg = forward.regularisation
            targets, cotangents = [per_example, reg], [v, tf.ones_like(reg)]
        v_tape.watch(v)
        grads = tape.gradient(targets, weights, output_gradients=cotangents, unconnected_gradients="zero")
        grads = [tf.convert_to_tensor(g) for g in grads]  # an embedding's IndexedSlices, as _gradient
        total = distributed.all_sum(grads)
        step = virtual_step if isinstance(virtual_step, VirtualStep) else virtual_step(total)
        j = val_fn(step.apply(weights, total))
    scores = -v_tape.gradient(j, v, unconnected_gradients="zero")
    return forward, tape, grads, j, scores
