"""The custom-loop trainer: steps, strategies, checkpoints, TensorBoard, export."""

from slf_tf.training.config_checks import validate_config
from slf_tf.training.factories import create_distribution_strategy, create_optimizer
from slf_tf.training.progress import format_report
from slf_tf.training.trainer import Trainer, train_and_evaluate

__all__ = [
    "Trainer",
    "create_distribution_strategy",
    "create_optimizer",
    "format_report",
    "train_and_evaluate",
    "validate_config",
]
