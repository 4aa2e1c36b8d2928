"""The validation hypergradient that trains the decision network (DESIGN 1.4).

One virtual SGD step of the main weights with the sampled coefficients ``c(v)``,

    w'(v) = w - eta * grad_w sum_i c_i L_i(w)
    J(v)  = L_val(w'(v))
    dJ/dc_i = -eta * <grad_w L_i(w), grad_w L_val(w')>        (= -eta * s_i)

then ``dJ/dv = sum_i dJ/dc_i * dc_i/dv`` through the sampler (relaxed,
straight-through or ILS). Two ways to get ``dJ/dc``, tested to agree:

* ``exact`` (default): nested GradientTapes through the virtual step; the
  lookahead forward is functional (``model.stateless_call``), so the real
  variables are never assigned inside a tape.
* ``finite_difference``: ``g = grad L_val(w')`` at the virtual weights, then all N
  scores from two forward passes, ``s_i = [L_i(w + eps g) - L_i(w - eps g)] / 2 eps``
  with ``eps = fd_epsilon / ||g||``; no second-order graph, error O(eps^2).

The gradient of the validation loss at ``w`` instead of ``w'`` is *not* offered as
the default: it drops the curvature term and was measured ~30% off at eta = 0.05.

With ``estimator="reinforce"`` the decision network gets the score-function
gradient instead: reward = decrease of the validation loss over the virtual
step, minus a moving-average baseline, times ``grad log P(draws)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from slf_tf import distributed
from slf_tf.stochastic_loss import CombinedLoss

__all__ = [
    "METHODS",
    "apply_decision_update",
    "coefficient_gradient",
    "decision_gradients",
    "fused_step",
    "record_decision_metrics",
]

METHODS = ("exact", "finite_difference")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown hypergradient method {method!r}; known: {list(METHODS)}.")


def _forward(model: keras.Model, trainable, non_trainable, x, training: bool):
    out, _ = model.stateless_call(trainable, non_trainable, x, training=training)
    return out


def _validation_loss(loss: CombinedLoss, model, trainable, non_trainable, x_val, y_val, global_val_batch=None):
    pred = _forward(model, trainable, non_trainable, x_val, False)
    return distributed.batch_mean(loss.validation_loss(y_val, pred), global_val_batch)


def _lookahead(
    model: keras.Model,
    loss: CombinedLoss,
    x,
    y,
    x_val,
    y_val,
    select_fn: Callable[[tf.Tensor], tf.Tensor],
    *,
    lookahead_lr: float,
    method: str,
    fd_epsilon: float,
    global_batch: int | None = None,
    global_val_batch: int | None = None,
) -> dict[str, tf.Tensor]:
    """Runs the virtual step; returns dJ/dc, J(w'), L(w) and the finite mask.

    Under a multi-replica strategy (with the global batch sizes given) every
    quantity below is this replica's partial sum, except the virtual step, which
    uses the all-reduced gradient so that ``w'`` is the same on every replica.
    """
    w = [v.value for v in model.trainable_variables]
    nt = [v.value for v in model.non_trainable_variables]
    eta = lookahead_lr
    with tf.GradientTape(watch_accessed_variables=False) as outer:
        with tf.GradientTape(watch_accessed_variables=False) as inner:
            inner.watch(w)
            pred, new_nt, reg_losses = model.stateless_call(w, nt, x, training=True, return_losses=True)
            per_example, finite = loss.per_example_losses(y, pred)
            finite = distributed.all_true(finite)
            per_example = tf.where(finite[None], per_example, tf.zeros_like(per_example))
            losses = distributed.batch_mean(per_example, global_batch)
            c = tf.stop_gradient(tf.cast(select_fn(finite), losses.dtype))
            if method == "exact":
                outer.watch(c)
            l_slf = tf.reduce_sum(c * losses)
            if reg_losses:
                l_slf += tf.cast(tf.add_n(reg_losses), l_slf.dtype) / distributed.num_replicas()
        # This replica's gradient of the SLF objective: the main step's gradient too (fused_step).
        main_grads = inner.gradient(l_slf, w, unconnected_gradients="zero")
        grads = distributed.all_sum(main_grads)
        w_virtual = [wi - tf.cast(eta, wi.dtype) * gi for wi, gi in zip(w, grads, strict=True)]
        if method == "exact":
            j = _validation_loss(loss, model, w_virtual, nt, x_val, y_val, global_val_batch)
    if method == "exact":
        d_j_dc = outer.gradient(j, c, unconnected_gradients="zero")
    else:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(w_virtual)
            j = _validation_loss(loss, model, w_virtual, nt, x_val, y_val, global_val_batch)
        g_val = distributed.all_sum(tape.gradient(j, w_virtual, unconnected_gradients="zero"))
        norm = tf.linalg.global_norm(g_val)
        eps = tf.cast(fd_epsilon, norm.dtype) / tf.maximum(norm, tf.cast(1e-12, norm.dtype))
        plus = [wi + tf.cast(eps, wi.dtype) * gi for wi, gi in zip(w, g_val, strict=True)]
        minus = [wi - tf.cast(eps, wi.dtype) * gi for wi, gi in zip(w, g_val, strict=True)]
        l_plus = distributed.batch_mean(loss.per_example_losses(y, _forward(model, plus, nt, x, True))[0], global_batch)
        l_minus = distributed.batch_mean(
            loss.per_example_losses(y, _forward(model, minus, nt, x, True))[0], global_batch
        )
        scores = (l_plus - l_minus) / (2.0 * tf.cast(eps, l_plus.dtype))
        d_j_dc = -tf.cast(eta, scores.dtype) * scores
    return {
        "d_j_dc": d_j_dc,
        "val_loss_lookahead": j,
        "losses": losses,
        "finite": finite,
        "w_virtual": w_virtual,
        "main_objective": l_slf,
        "main_grads": main_grads,
        "pred": pred,
        "per_example": per_example,
        "non_trainable": new_nt,
    }


def coefficient_gradient(
    model: keras.Model,
    loss: CombinedLoss,
    x,
    y,
    x_val,
    y_val,
    coefficients: tf.Tensor,
    *,
    lookahead_lr: float,
    method: str = "exact",
    fd_epsilon: float = 1e-3,
) -> tuple[tf.Tensor, tf.Tensor]:
    """``(dJ/dc [N], J(w'))`` for given coefficients ``c`` (masked candidates get ``c_i = 0``)."""
    _check_method(method)

    def select_fn(finite):
        return coefficients * tf.cast(finite, coefficients.dtype)

    out = _lookahead(
        model,
        loss,
        x,
        y,
        x_val,
        y_val,
        select_fn,
        lookahead_lr=lookahead_lr,
        method=method,
        fd_epsilon=fd_epsilon,
    )
    return out["d_j_dc"], out["val_loss_lookahead"]


def decision_gradients(
    model: keras.Model,
    loss: CombinedLoss,
    x,
    y,
    x_val,
    y_val,
    *,
    seed: Any,
    lookahead_lr: float = 0.05,
    method: str = "exact",
    entropy_weight: float = 0.0,
    fd_epsilon: float = 1e-3,
    global_batch: int | None = None,
    global_val_batch: int | None = None,
    with_lookahead: bool = False,
):
    """Gradients for ``loss.decision_variables`` and metrics, by the loss's update rule.

    Args:
      model: the main network (Keras 3), called functionally.
      loss: the combined loss; its ``update_rule`` picks the rule.
      x, y: a training batch; x_val, y_val: a validation batch.
      seed: the stateless seed of the selection noise (use the main step's).
      lookahead_lr: eta of the virtual SGD step.
      method: ``exact`` or ``finite_difference``.
      entropy_weight: weight of an entropy bonus on ``softmax(alpha)`` (exploration).
      fd_epsilon: the finite-difference step, relative to ``||grad L_val(w')||``.
      global_batch, global_val_batch: under a multi-replica strategy, the global
        batch sizes; the returned gradients are then this replica's partial sums
        (the optimizer's all-reduce adds them up), metrics are global.

      with_lookahead: also return the lookahead's intermediate results (the
        main gradient, predictions, selection), which :func:`fused_step` reuses.

    Returns:
      ``(grads, metrics)`` (plus the lookahead dict with ``with_lookahead``). State
      updates that follow from the metrics (running validation loss, reward
      baseline) are left to :func:`record_decision_metrics`, to be called in
      cross-replica context.
    """
    _check_method(method)
    variables = loss.decision_variables
    replicas = distributed.num_replicas()
    metrics: dict[str, tf.Tensor] = {}
    if loss.update_rule == "training_objective":
        watched = [v.value for v in variables]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(watched)
            per_example, _ = loss.per_example_losses(y, model(x, training=True))
            losses = distributed.all_sum(distributed.batch_mean(per_example, global_batch))
            objective = loss.decision_objective(tf.cast(losses, tf.float32)) / replicas
        grads = tape.gradient(objective, watched, unconnected_gradients="zero")
        metrics["decision_objective"] = objective * replicas
    elif loss.update_rule == "hypergradient":
        holder = {}

        def select_fn(finite):
            holder["selection"] = loss.select(seed, finite)
            return holder["selection"].coefficients

        watched = [v.value for v in variables]
        # Watch only the decision variables: the model's reads must not be recorded here.
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(watched)
            out = _lookahead(
                model,
                loss,
                x,
                y,
                x_val,
                y_val,
                select_fn,
                lookahead_lr=lookahead_lr,
                method=method,
                fd_epsilon=fd_epsilon,
                global_batch=global_batch,
                global_val_batch=global_val_batch,
            )
            sel = holder["selection"]
            val_after = distributed.all_sum(out["val_loss_lookahead"])
            if getattr(loss, "estimator", None) == "reinforce":
                w = [v.value for v in model.trainable_variables]
                nt = [v.value for v in model.non_trainable_variables]
                j0 = distributed.all_sum(_validation_loss(loss, model, w, nt, x_val, y_val, global_val_batch))
                reward = tf.cast(j0 - val_after, tf.float32)
                advantage = tf.stop_gradient(reward - loss.reward_baseline.value)
                objective = -advantage * sel.log_prob / replicas
                metrics["reward"] = reward
            else:
                d_j_dc = tf.stop_gradient(tf.cast(out["d_j_dc"], sel.coefficients.dtype))
                objective = tf.reduce_sum(sel.coefficients * d_j_dc)
            if entropy_weight:
                alpha, _ = loss.logits()
                entropy = -tf.reduce_sum(tf.nn.softmax(alpha) * tf.nn.log_softmax(alpha))
                objective -= entropy_weight * entropy / replicas
        grads = tape.gradient(objective, watched, unconnected_gradients="zero")
        metrics["val_loss_lookahead"] = val_after
        scores = -out["d_j_dc"] / tf.cast(lookahead_lr, out["d_j_dc"].dtype)
        metrics["scores"] = distributed.all_sum(scores)
    else:
        grads = []
    # The norm of the summed (global) gradient; the optimizer all-reduces the partials itself.
    metrics["hypergrad_norm"] = tf.linalg.global_norm(distributed.all_sum(grads)) if grads else tf.zeros([])
    if with_lookahead:
        if loss.update_rule != "hypergradient":
            raise ValueError(f"with_lookahead needs a hypergradient loss; {loss.strategy!r} has none.")
        out["selection"] = holder["selection"]
        return grads, metrics, out
    return grads, metrics


def _apply_if_finite(optimizer, grads, variables) -> tf.Tensor:
    """Applies ``grads`` only if all are finite on every replica; returns the skip flag.

    A skipped step leaves the weights, the optimizer's moments and its iteration
    count untouched (a zero-gradient step would still move Adam's weights by the
    decayed momentum).
    """
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
    finite = distributed.all_true(finite[None])[0]
    distributed.apply_if(finite, optimizer, grads, variables)
    return tf.cast(tf.logical_not(finite), tf.float32)


def fused_step(
    model: keras.Model,
    loss: CombinedLoss,
    main_optimizer: keras.optimizers.Optimizer,
    decision_optimizer: keras.optimizers.Optimizer,
    x,
    y,
    x_val,
    y_val,
    **kwargs: Any,
) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """One training step with the decision update fused in: one forward/backward of the train batch.

    The gradient of ``sum_i c_i L_i`` at the current weights ``w`` is computed
    once, under the outer tape of the hypergradient; it moves the main network
    (``main_optimizer``) and defines the virtual step ``w' = w - eta g`` of the
    decision update (``decision_optimizer``), which therefore uses the very
    coefficients ``c`` the main step used. Compared with a main step followed by a
    separate hypergradient at the updated weights, this saves one forward and one
    backward pass of the train batch.

    Returns ``(out, metrics)``: the lookahead results (``pred``, ``per_example``,
    ``selection``, ``finite``, ``main_objective``, ``main_skipped``) and the decision metrics.
    """
    grads_v, metrics, out = decision_gradients(model, loss, x, y, x_val, y_val, with_lookahead=True, **kwargs)
    out["main_skipped"] = _apply_if_finite(main_optimizer, out["main_grads"], model.trainable_variables)
    for variable, value in zip(model.non_trainable_variables, out["non_trainable"], strict=True):
        variable.assign(value)  # e.g. batch-norm statistics of the training forward
    metrics["skipped"] = _apply_if_finite(decision_optimizer, grads_v, loss.decision_variables)
    return out, metrics


def record_decision_metrics(loss: CombinedLoss, metrics: dict[str, tf.Tensor]) -> None:
    """Folds a decision update's metrics into the loss state (running validation loss, reward baseline)."""
    if "val_loss_lookahead" in metrics:
        loss.update_validation_loss(metrics["val_loss_lookahead"])
    if "reward" in metrics:
        loss.update_reward_baseline(metrics["reward"])


def apply_decision_update(
    model: keras.Model,
    loss: CombinedLoss,
    optimizer: keras.optimizers.Optimizer,
    x,
    y,
    x_val,
    y_val,
    *,
    record: bool = True,
    **kwargs: Any,
) -> dict[str, tf.Tensor]:
    """:func:`decision_gradients`, then one ``optimizer`` step on the decision variables.

    Non-finite gradients are replaced by zeros (``metrics["skipped"] = 1``).
    ``record=False`` leaves :func:`record_decision_metrics` to the caller (needed
    under a multi-replica strategy, where state is updated in cross-replica context).
    """
    grads, metrics = decision_gradients(model, loss, x, y, x_val, y_val, **kwargs)
    if grads:
        metrics["skipped"] = _apply_if_finite(optimizer, grads, loss.decision_variables)
    if record:
        record_decision_metrics(loss, metrics)
    return metrics
