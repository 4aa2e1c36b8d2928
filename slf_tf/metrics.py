"""Task metrics, one function for the training step and for evaluation (cf. Flax's ``compute_metrics``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from slf_tf import losses
from slf_tf.losses import keras_mask, position_weights, reduce_positions

__all__ = [
    "HEADLINE",
    "headline_score",
    "headlines",
    "higher_is_better",
    "objective_metric",
    "output_sums",
    "task_sums",
]

#: The metric a run is judged by, per task (higher is better for accuracy and IoU, lower for mae).
HEADLINE = {"classification": "accuracy", "binary": "accuracy", "regression": "mae", "box": "iou"}


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` (``accuracy``, ``val_box/iou``, ``loss`` ...) is better."""
    return metric.rpartition("/")[2].removeprefix("val_") in ("accuracy", "iou", "score")


def headlines(task: str, outputs: Mapping[str, str] | None = None) -> list[str]:
    """The metrics a run is judged by: ``[HEADLINE[task]]``, or ``<output>/<its headline>`` per output."""
    if outputs:
        return [f"{output}/{HEADLINE[kind]}" for output, kind in outputs.items()]
    return [HEADLINE[task]]


def headline_score(means: Mapping[str, float], outputs: Mapping[str, str]) -> float:
    """One number for several outputs: the mean of their headline metrics (accuracy, IoU), a lower-is-better
    one (MAE) entering negated; what ``best_metric="auto"`` picks the best checkpoint by."""
    values = [means[h] if higher_is_better(h) else -means[h] for h in headlines("multi_output", outputs)]
    return sum(values) / len(values)


def output_sums(outputs: Mapping[str, str], y: Mapping[str, Any], pred: Mapping[str, Any]) -> dict[str, tf.Tensor]:
    """:func:`task_sums` of each output (``{output: kind}``), named ``<output>/<metric>``."""
    return {f"{o}/{k}": v for o, kind in outputs.items() for k, v in task_sums(kind, y[o], pred[o]).items()}


def task_sums(task: str, y: Any, pred: Any, mask: Any = None) -> dict[str, tf.Tensor]:
    """Per-batch *sums* over examples (divide by the number of examples): correct predictions, or errors.

    An example's value is its mean over positions (token accuracy for ``[batch, T, C]``
    logits), masked as its loss is (:func:`slf_tf.losses.position_weights`; ``mask``
    defaults to the Keras mask of ``pred``), so the batch mean is the mean over valid positions.

    Args:
      task: ``classification`` (``pred`` logits ``[B, P, C]``; ``y`` integer labels
        ``[B, P]``/``[B, P, 1]`` or one-hot ``[B, P, C]``), ``binary`` (``pred``
        ``[B, P]``/``[B, P, 1]`` logits, ``y`` in {0, 1}) or ``regression`` (``[B]`` or
        ``[B, P, d]``; errors averaged over ``d``) or ``box`` (corners ``[B, P, 4]``: IoU and the mean
        absolute corner error). ``P``: any positions, none included.
    """
    mask = keras_mask(pred) if mask is None else mask
    pred = tf.convert_to_tensor(pred)
    y = tf.convert_to_tensor(y)
    if task == "classification":
        guess = tf.argmax(pred, axis=-1, output_type=tf.int32)
        if y.shape.rank == pred.shape.rank and y.shape[-1] == pred.shape[-1] and pred.shape[-1] != 1:
            label = tf.argmax(y, axis=-1, output_type=tf.int32)  # one-hot
        else:
            label = tf.cast(tf.reshape(y, [-1] if pred.shape.rank == 2 else tf.shape(guess)), tf.int32)
        return {"accuracy": _example_sum(tf.cast(tf.equal(guess, label), tf.float32), mask)}
    if task == "binary":
        if pred.shape.rank >= 2 and pred.shape[-1] == 1:
            pred = pred[..., 0]
        guess = tf.cast(pred > 0, tf.float32)
        label = tf.cast(tf.reshape(y, tf.shape(guess)), tf.float32)
        return {"accuracy": _example_sum(tf.cast(tf.equal(guess, label), tf.float32), mask)}
    if task == "box":
        pred, y = tf.cast(pred, tf.float32), tf.cast(y, tf.float32)
        iou = 1.0 - losses.get("iou", task="regression").per_position(y, pred)
        return {"iou": _example_sum(iou, mask), "mae": _example_sum(tf.reduce_mean(tf.abs(pred - y), -1), mask)}
    pred = tf.cast(pred if pred.shape.rank > 1 else pred[:, None], tf.float32)
    err = pred - tf.cast(tf.reshape(y, tf.shape(pred)), tf.float32)  # [B, P, d]
    return {
        "mae": _example_sum(tf.reduce_mean(tf.abs(err), axis=-1), mask),
        "mse": _example_sum(tf.reduce_mean(tf.square(err), axis=-1), mask),
    }


def _example_sum(values: tf.Tensor, mask: Any) -> tf.Tensor:
    """The sum over examples of each one's (masked) mean over positions."""
    return tf.reduce_sum(reduce_positions(values, position_weights(values, None, mask)))


def objective_metric(loss: Any) -> keras.metrics.Metric:
    """A Keras metric of a combined loss's noise-free validation objective (cross-entropy, MSE or BCE by task).

    Unlike the loss itself, its value does not depend on the decision network, so
    ``EarlyStopping``/``ModelCheckpoint`` can monitor ``val_<name>`` comparably
    across strategies; the name is the objective's candidate name (``cross_entropy``).
    """
    return keras.metrics.MeanMetricWrapper(loss.validation_loss, name=loss.validation_loss_spec)
