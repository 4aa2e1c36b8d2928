"""Task metrics, one function for the training step and for evaluation (cf. Flax's ``compute_metrics``)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

__all__ = ["HEADLINE", "objective_metric", "task_sums"]

#: The metric a run is judged by, per task (higher is better for accuracy, lower for mae).
HEADLINE = {"classification": "accuracy", "binary": "accuracy", "regression": "mae"}


def task_sums(task: str, y: Any, pred: tf.Tensor) -> dict[str, tf.Tensor]:
    """Per-batch *sums* (divide by the number of examples): correct predictions, or absolute/squared errors.

    Args:
      task: ``classification`` (``pred`` logits ``[B, C]``; ``y`` integer labels
        ``[B]``/``[B, 1]`` or one-hot ``[B, C]``), ``binary`` (``pred`` ``[B]``/``[B, 1]``
        logits, ``y`` in {0, 1}) or ``regression``.
    """
    pred = tf.convert_to_tensor(pred)
    y = tf.convert_to_tensor(y)
    if task == "classification":
        guess = tf.argmax(pred, axis=-1, output_type=tf.int32)
        if y.shape.rank == pred.shape.rank and y.shape[-1] == pred.shape[-1] and pred.shape[-1] != 1:
            label = tf.argmax(y, axis=-1, output_type=tf.int32)  # one-hot
        else:
            label = tf.cast(tf.reshape(y, [-1]), tf.int32)
        return {"accuracy": tf.reduce_sum(tf.cast(tf.equal(guess, label), tf.float32))}
    if task == "binary":
        guess = tf.cast(tf.reshape(pred, [-1]) > 0, tf.float32)
        return {
            "accuracy": tf.reduce_sum(tf.cast(tf.equal(guess, tf.cast(tf.reshape(y, [-1]), tf.float32)), tf.float32))
        }
    err = tf.cast(tf.reshape(pred, [-1]), tf.float32) - tf.cast(tf.reshape(y, [-1]), tf.float32)
    return {"mae": tf.reduce_sum(tf.abs(err)), "mse": tf.reduce_sum(tf.square(err))}


def objective_metric(loss: Any) -> keras.metrics.Metric:
    """A Keras metric of a combined loss's noise-free validation objective (cross-entropy, MSE or BCE by task).

    Unlike the loss itself, its value does not depend on the decision network, so
    ``EarlyStopping``/``ModelCheckpoint`` can monitor ``val_<name>`` comparably
    across strategies; the name is the objective's candidate name (``cross_entropy``).
    """
    return keras.metrics.MeanMetricWrapper(loss.validation_loss, name=loss.validation_loss_spec)
