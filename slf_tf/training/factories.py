"""Factories from config names to objects; each fails loudly, listing what is allowed."""

from __future__ import annotations

import json
import os
from typing import Any

import keras
import tensorflow as tf

from slf_tf import data as data_lib
from slf_tf import decision as decision_lib
from slf_tf import losses, models, schedules, selection
from slf_tf.stochastic_loss import STRATEGIES, CombinedLoss, create_loss
from slf_tf.train_step import DecisionSettings

__all__ = [
    "DISTRIBUTION_STRATEGIES",
    "OPTIMIZERS",
    "create_distribution_strategy",
    "best_metric",
    "create_loss_from_config",
    "create_optimizer",
    "decision_settings",
    "temperature_schedule",
    "validate_config",
]

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
DISTRIBUTION_STRATEGIES = ("default", "mirrored", "multi_worker")


def create_optimizer(name: str, learning_rate: float, momentum: float = 0.9, weight_decay: float = 0.0, clipnorm=0.0):
    """A Keras optimizer by name (``adam``, ``adamw``, ``sgd`` with momentum, ``rmsprop``)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; known: {list(OPTIMIZERS)}.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0; got {learning_rate!r}.")
    kw: dict[str, Any] = {"learning_rate": learning_rate}
    if clipnorm:
        kw["global_clipnorm"] = clipnorm
    if name == "adam":
        return keras.optimizers.Adam(**kw)
    if name == "adamw":
        return keras.optimizers.AdamW(weight_decay=weight_decay or 1e-4, **kw)
    if name == "sgd":
        return keras.optimizers.SGD(momentum=momentum, **kw)
    return keras.optimizers.RMSprop(**kw)


_MIRRORED: dict[tuple[str, ...], tf.distribute.MirroredStrategy] = {}


def create_distribution_strategy(name: str) -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (all local GPUs, else all logical CPUs), ``multi_worker`` (TF_CONFIG)."""
    if name not in DISTRIBUTION_STRATEGIES:
        extra = " Parameter-server training is not supported." if "parameter" in name or name == "ps" else ""
        raise ValueError(f"Unknown distribution strategy {name!r}; known: {list(DISTRIBUTION_STRATEGIES)}.{extra}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = tuple(d.name for d in (gpus or tf.config.list_logical_devices("CPU")))
        # One strategy per device set and process: a second MirroredStrategy restarts the collective
        # keys, and its all-reduces then clash with the first one's cached shapes ("Shape mismatch in
        # the collective instance 100", tensorflow/tensorflow#62790) as soon as the models differ.
        if devices not in _MIRRORED:
            _MIRRORED[devices] = tf.distribute.MirroredStrategy(devices=list(devices))
        return _MIRRORED[devices]
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    if "ps" in tf_config.get("cluster", {}):
        raise ValueError("TF_CONFIG describes parameter servers ('ps'); parameter-server training is not supported.")
    return tf.distribute.MultiWorkerMirroredStrategy()


def temperature_schedule(config) -> schedules.TemperatureSchedule:
    """The temperature schedule of ``config.loss.temperature`` (the one place configs become schedules)."""
    t = config.loss.temperature
    if t.kind == "constant":
        return schedules.ConstantTemperature(t.initial)
    if t.kind == "exponential":
        return schedules.ExponentialAnneal(t.initial, t.rate, t.minimum)
    if t.kind == "cosine":
        return schedules.CosineAnneal(t.initial, t.minimum, max(1, int(t.get("decay_steps", config.num_train_steps))))
    raise ValueError(f"Unknown temperature kind {t.kind!r}; known: ['constant', 'exponential', 'cosine'].")


def create_loss_from_config(config, task: str) -> CombinedLoss:
    """The combined loss of ``config.loss`` (and ``config.decision``'s network) for ``task``."""
    c, d = config.loss, config.decision
    return create_loss(
        c.strategy,
        list(c.candidates),
        task=task,
        k=c.k,
        temperature=temperature_schedule(config),
        estimator=c.estimator,
        weighting=c.weighting,
        threshold=c.threshold,
        decision_network=d.network,
        hidden_units=d.hidden_units,
        normalize=c.normalize,
        seed=config.seed,
        loss=c.fixed or None,
        beta=c.softadapt_beta,
        total_steps=config.num_train_steps,
    )


def decision_settings(config) -> DecisionSettings:
    """How the decision network is updated, from ``config.decision``."""
    d = config.decision
    return DecisionSettings(
        every=d.every,
        lookahead_lr=d.lookahead_lr,
        virtual_step=d.virtual_step,
        method=d.method,
        entropy_weight=d.entropy_weight,
        fd_epsilon=d.fd_epsilon,
    )


BEST_METRICS = ("auto", "val_accuracy", "val_loss", "val_mae", "")


def best_metric(config, task: str) -> str:
    """The validation metric that picks the best checkpoint (``""``: none); ``auto`` = accuracy or MAE by task."""
    name = config.best_metric
    if name == "auto":
        return "val_mae" if task == "regression" else "val_accuracy"
    available = ("val_loss", "val_mae") if task == "regression" else ("val_loss", "val_accuracy")
    if name and name not in available:
        raise ValueError(f"config.best_metric={name!r} is not available for {task}; use one of {list(available)}.")
    return name


# Fields that were renamed: the old name in a config gets an error naming the new one.
RENAMED = {
    "strategy": "distribution (the tf.distribute strategy; loss.strategy is the kind of loss)",
    "slf": "decision (decision_every -> decision.every; the other fields keep their names)",
    "loss.decision": "decision.network",
    "loss.hidden_units": "decision.hidden_units",
    "debug_kill_at_step": "nothing: it was a test hook and is gone",
}


def _check_renamed(config) -> None:
    for old, new in RENAMED.items():
        node = config
        *parents, leaf = old.split(".")
        for p in parents:
            node = node.get(p, {}) if hasattr(node, "get") else {}
        if hasattr(node, "get") and leaf in node:
            raise ValueError(f"config.{old} was renamed: use config.{new}.")


def _positive_int(config, key: str, prefix: str = "") -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.{prefix}{key} must be an integer >= 1; got {value!r}.")


def validate_config(config) -> None:
    """Checks every name and number a run needs, before any data, model or file is touched."""
    _check_renamed(config)
    for key in ("num_train_steps", "batch_size", "log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
        _positive_int(config, key)
    if config.distribution not in DISTRIBUTION_STRATEGIES:
        create_distribution_strategy(config.distribution)  # raises with the allowed names
    name = config.data.name
    if name not in data_lib.EMBEDDED and name != "mnist" and not name.startswith("tfds:"):
        raise ValueError(f"Unknown dataset {name!r}; known: {list(data_lib.DATASETS)}.")
    if config.model.name not in models.MODELS:
        raise ValueError(f"Unknown model {config.model.name!r}; known: {list(models.MODELS)}.")
    if config.optimizer.name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {config.optimizer.name!r}; known: {list(OPTIMIZERS)}.")
    if config.decision.optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown decision optimizer {config.decision.optimizer!r}; known: {list(OPTIMIZERS)}.")
    if config.loss.strategy not in STRATEGIES:
        raise ValueError(f"Unknown loss strategy {config.loss.strategy!r}; known: {sorted(STRATEGIES)}.")
    task = data_lib.EMBEDDED.get(name, "classification")
    losses.LossBag(list(config.loss.candidates), task=task)  # names, parameters, duplicates
    selection.check_options(config.loss.k, config.loss.estimator, config.loss.weighting)
    if config.decision.network not in decision_lib.KINDS:
        raise ValueError(f"Unknown decision network {config.decision.network!r}; known: {list(decision_lib.KINDS)}.")
    temperature_schedule(config)
    decision_settings(config)  # every, lookahead_lr, virtual_step, method, entropy_weight, fd_epsilon
    _positive_int(config.decision, "val_batch_size", "decision.")
    if config.get("mixed_precision", "") not in ("", "float32", "mixed_bfloat16", "mixed_float16"):
        raise ValueError(
            f"Unknown mixed_precision {config.mixed_precision!r}; known: ['', 'mixed_bfloat16', 'mixed_float16']."
        )
    if config.best_metric not in BEST_METRICS:
        raise ValueError(f"Unknown best_metric {config.best_metric!r}; known: {list(BEST_METRICS)}.")
    best_metric(config, task)
    patience = config.early_stopping_patience
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise ValueError(f"config.early_stopping_patience must be an integer >= 0 (0: off); got {patience!r}.")
