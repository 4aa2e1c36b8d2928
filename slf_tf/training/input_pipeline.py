"""Step-indexed input: batch ``t`` is a pure function of ``(seed, t)``.

The train batch of step t is slice ``t mod E`` of epoch ``t // E``'s permutation
(drawn from a stateless seed), and the decision-validation batch is drawn the same
way from the validation split. So the data position is the step itself: a resumed
run sees exactly the batches an uninterrupted run would, and every replica (or
worker) takes its own slice of the same global batch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["distributed_batches", "step_batches"]


def _batch_indices(n: int, batch: int, seed: int, stream: int, step: tf.Tensor) -> tf.Tensor:
    per_epoch = max(1, n // batch)
    epoch = step // per_epoch
    position = step % per_epoch
    keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64) * 7919 + stream, epoch]))
    perm = tf.argsort(keys)
    if n >= batch:
        return perm[position * batch : (position + 1) * batch]
    return tf.gather(perm, tf.range(batch) % n)  # a split smaller than the batch: wrap around


def step_batches(
    x: np.ndarray,
    y: np.ndarray | dict[str, np.ndarray],
    x_val: np.ndarray,
    y_val: np.ndarray | dict[str, np.ndarray],
    *,
    batch_size: int,
    val_batch_size: int,
    seed: int,
    start_step: int,
    num_steps: int,
    replica_ids: tuple[int, ...] = (0,),
    num_replicas: int = 1,
) -> tf.data.Dataset:
    """``(step, x, y, x_val, y_val)`` for steps ``start_step .. num_steps - 1``.

    Each step yields one element per id in ``replica_ids`` (in order): that
    replica's slice of the global batch. ``batch_size`` and ``val_batch_size`` are
    global; each must divide by ``num_replicas``.
    """
    for name, b in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
        if b % num_replicas:
            raise ValueError(f"{name}={b} must be divisible by the number of replicas ({num_replicas}).")
    if len(x) == 0 or len(x_val) == 0:
        raise ValueError(f"Empty split: {len(x)} training and {len(x_val)} validation examples.")
    tx, ty, tvx, tvy = (tf.nest.map_structure(tf.constant, a) for a in (x, y, x_val, y_val))  # y: a dict per output
    per, per_val = batch_size // num_replicas, val_batch_size // num_replicas
    ids = tf.constant(replica_ids, tf.int64)

    def per_step(step):
        idx = _batch_indices(len(x), batch_size, seed, 0, step)
        vidx = _batch_indices(len(x_val), val_batch_size, seed, 1, step)

        def per_replica(r):
            i = tf.cast(r, tf.int32)
            # Sizes left dynamic on purpose: static ones fold the step's shape ops (3-10% of a small MLP's
            # step) but round one device's step differently from a replica's (README, "Step overhead").
            mine, vmine = idx[i * per : (i + 1) * per], vidx[i * per_val : (i + 1) * per_val]
            take = lambda arrays, idx: tf.nest.map_structure(lambda a: tf.gather(a, idx), arrays)  # noqa: E731
            return step, take(tx, mine), take(ty, mine), take(tvx, vmine), take(tvy, vmine)

        return tf.data.Dataset.from_tensor_slices(ids).map(per_replica)

    ds = tf.data.Dataset.range(start_step, num_steps).flat_map(per_step)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return ds.with_options(options).prefetch(4)


def distributed_batches(strategy: tf.distribute.Strategy, arrays, **kwargs):
    """An iterator of per-replica ``(step, x, y, x_val, y_val)`` under ``strategy``.

    The strategy calls the dataset function once per worker and hands the
    elements to that worker's replicas round-robin, so each worker's dataset
    yields its local replicas' slices in order.
    """

    def fn(ctx: tf.distribute.InputContext):
        local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * local
        ids = tuple(range(first, first + local))
        return step_batches(*arrays, replica_ids=ids, num_replicas=ctx.num_replicas_in_sync, **kwargs)

    return iter(strategy.distribute_datasets_from_function(fn))
