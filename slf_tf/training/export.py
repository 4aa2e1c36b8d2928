"""The run's exports: the last model and the best-validation one, each as ``.keras`` and a SavedModel."""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from slf_tf.training import checkpointing

__all__ = ["export_best", "export_model"]


def export_model(model: keras.Model, directory: str) -> tuple[str, str]:
    """Writes ``directory/model.keras`` and ``directory/saved_model``; returns both paths.

    A failed write (a full disk, no permission) raises ``OSError`` naming the directory and the fix.
    """
    keras_path, saved_path = os.path.join(directory, "model.keras"), os.path.join(directory, "saved_model")
    try:
        os.makedirs(directory, exist_ok=True)
        model.save(keras_path)
        model.export(saved_path, format="tf_saved_model", verbose=False)
    except (OSError, tf.errors.OpError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
        raise OSError(
            f"Could not export the model to {directory} ({reason}). Free space there (or fix its permissions) and "
            "rerun with the same workdir: training is done and kept in checkpoints/; the rerun only re-evaluates "
            "and exports."
        ) from e
    return keras_path, saved_path


def export_best(model: keras.Model, best_checkpoint_dir: str, directory: str) -> tuple[str, str]:
    """Exports a clone of ``model`` holding the newest checkpoint in ``best_checkpoint_dir``."""
    best = keras.models.clone_model(model)
    checkpoint = tf.train.Checkpoint(model=best)
    checkpoint.restore(checkpointing.list_checkpoints(best_checkpoint_dir)[-1]).expect_partial()
    return export_model(best, directory)
