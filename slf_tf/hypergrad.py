"""The validation hypergradient: how the next validation loss depends on the coefficients ``c``.

A virtual step of the main weights with the step's coefficients,

    w'(c) = w - P * grad_w sum_i c_i L_i(w)      (P: SGD's eta, or the main optimizer's preconditioner)
    J(c)  = L_val(w'(c))
    dJ/dc_i = -<P grad_w L_i(w), grad_w L_val(w')>

then ``dJ/dv = sum_i dJ/dc_i dc_i/dv`` through the sampler (in the training step).
Two ways to get ``dJ/dc``, tested to agree (docs/design.md, "The hypergradient"):

* ``exact`` (default): nested GradientTapes through the virtual step; the
  forwards are functional (``model.stateless_call``), so no variable is assigned
  inside a tape.
* ``finite_difference``: ``g = grad L_val(w')``, then all N entries from two
  forwards of the train batch, ``-[L_i(w + eps P g) - L_i(w - eps P g)] / 2 eps``
  with ``eps = fd_epsilon / ||P g||``; no second-order graph, error O(eps^2).

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
    "lookahead",
    "main_gradient",
    "preconditioned_step",
    "sgd_step",
]

METHODS = ("exact", "finite_difference")
VIRTUAL_STEPS = ("sgd", "optimizer")


def check_method(method: str) -> None:
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


class VirtualStep(NamedTuple):
    """``w' = w - scale * g`` per variable; ``scale`` (a scalar or elementwise) carries no gradient."""

    scales: list

    def apply(self, weights: Sequence[tf.Tensor], grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return [w - tf.cast(s, w.dtype) * g for w, s, g in zip(weights, self.scales, grads, strict=True)]


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


def _forward_and_gradient(forward_fn: ForwardFn, weights, coefficients) -> tuple[TrainForward, list]:
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(weights)
        forward = forward_fn(weights, coefficients)
    return forward, tape.gradient(forward.objective, weights, unconnected_gradients="zero")


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
) -> Lookahead:
    """The forward, the main gradient, the virtual step and ``dJ/dc``, from one forward/backward of the batch.

    Args:
      forward_fn: ``(weights, c) -> TrainForward`` on the train batch.
      val_fn: ``weights -> this replica's partial J`` on the validation batch.
      weights: the main network's trainable values.
      coefficients: ``c [N]``, without a gradient path to the decision network.
      virtual_step: a :class:`VirtualStep`, or a function of the global main
        gradient returning one (:func:`preconditioned_step`).
      method: ``exact`` or ``finite_difference``.
      fd_epsilon: the finite-difference step, relative to ``||P grad J(w')||``.
      with_val_loss_before: also compute ``J(w)`` (the REINFORCE reward).
    """
    check_method(method)
    with tf.GradientTape(watch_accessed_variables=False) as c_tape:
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
        j, d_j_dc = _finite_difference(forward_fn, val_fn, weights, coefficients, virtual, step, fd_epsilon)
    before = distributed.all_sum(val_fn(weights)) if with_val_loss_before else tf.zeros([], j.dtype)
    losses = distributed.all_sum(forward.candidate_losses)
    return Lookahead(forward, grads, losses, d_j_dc, distributed.all_sum(j), before)


def _finite_difference(forward_fn, val_fn, weights, coefficients, virtual, step: VirtualStep, fd_epsilon: float):
    """``(J(w') partial, dJ/dc global)`` by central differences of the train losses along ``P grad J(w')``."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(virtual)
        j = val_fn(virtual)
    direction = step.apply([tf.zeros_like(w) for w in weights], distributed.all_sum(tape.gradient(j, virtual)))
    direction = [-d for d in direction]  # P * grad J(w')
    norm = tf.linalg.global_norm(direction)
    eps = tf.cast(fd_epsilon, norm.dtype) / tf.maximum(norm, tf.cast(1e-12, norm.dtype))
    plus = [w + tf.cast(eps, w.dtype) * d for w, d in zip(weights, direction, strict=True)]
    minus = [w - tf.cast(eps, w.dtype) * d for w, d in zip(weights, direction, strict=True)]
    l_plus = forward_fn(plus, coefficients).candidate_losses
    l_minus = forward_fn(minus, coefficients).candidate_losses
    d_j_dc = -distributed.all_sum(l_plus - l_minus) / (2.0 * tf.cast(eps, l_plus.dtype))
    return j, d_j_dc
