"""Cross-replica helpers that are no-ops outside a multi-replica ``tf.distribute`` context.

Per-replica code computes *partial* sums scaled by the global batch size (as
``tf.nn.compute_average_loss`` does); these helpers turn partials into global
values where a step needs them (the virtual SGD step, the finite mask, rewards).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["all_sum", "all_true", "apply_if", "batch_mean", "num_replicas"]


def _replica_context():
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def num_replicas() -> int:
    """Replicas in sync (1 outside a strategy or in cross-replica context)."""
    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else ctx.num_replicas_in_sync


def all_sum(x):
    """Sums a tensor (or a nest of tensors) over replicas; differentiable (its gradient is an all-sum)."""
    ctx = _replica_context()
    return x if ctx is None else ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def all_true(mask: tf.Tensor) -> tf.Tensor:
    """Logical AND of a bool mask over replicas."""
    ctx = _replica_context()
    if ctx is None:
        return mask
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(mask), tf.float32))
    return tf.equal(bad, 0.0)


def batch_mean(x: tf.Tensor, global_batch_size: int | None = None, axis: int = 0) -> tf.Tensor:
    """Mean over the batch axis; with ``global_batch_size``, this replica's partial ``sum / global``."""
    if global_batch_size is None:
        return tf.reduce_mean(x, axis=axis)
    return tf.reduce_sum(x, axis=axis) / tf.cast(global_batch_size, x.dtype)


def apply_if(condition: tf.Tensor, optimizer, grads, variables) -> None:
    """``optimizer.apply_gradients(zip(grads, variables))`` only where ``condition`` (same on every replica).

    Under a strategy the ``tf.cond`` must run in cross-replica context:
    ``apply_gradients`` calls ``merge_call``, which a ``cond`` branch in replica
    context may not (the pattern Keras' ``LossScaleOptimizer`` uses).
    """

    def apply(grads):
        optimizer.apply_gradients(zip(grads, variables, strict=True))

    def run_if(pred, fn):  # cond needs both branches to return the same structure
        tf.cond(pred, lambda: (fn(), tf.constant(True))[1], lambda: tf.constant(False))

    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        raise ValueError("apply_if must be called in a replica context (inside strategy.run or no strategy).")
    if not tf.distribute.has_strategy():
        run_if(condition, lambda: apply(grads))
        return

    def cross_replica(strategy, condition, grads):
        first = strategy.experimental_local_results(condition)[0]
        run_if(first, lambda: strategy.extended.call_for_each_replica(apply, args=(grads,)))

    # identity: a tensor shared by all replicas (e.g. a captured input) would not regroup as per-replica.
    ctx.merge_call(cross_replica, args=(condition, [tf.identity(g) for g in grads]))
