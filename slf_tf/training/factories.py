"""Factories from config names to objects; each fails loudly, listing what is allowed."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from slf_tf import schedules
from slf_tf.heads import HeadLosses
from slf_tf.stochastic_loss import CombinedLoss, create_loss
from slf_tf.train_step import DecisionSettings

__all__ = [
    "DISTRIBUTION_STRATEGIES",
    "LOSS_TASKS",
    "OPTIMIZERS",
    "OUTPUT_METRICS",
    "create_distribution_strategy",
    "best_metric",
    "create_loss_from_config",
    "create_optimizer",
    "decision_settings",
    "temperature_schedule",
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


def parse_tf_config() -> dict[str, Any]:
    """``TF_CONFIG`` checked for what one process can see: JSON, a non-empty worker list of ``host:port``
    addresses, and this process's task among them (errors name the variable and the bad value)."""
    raw = os.environ.get("TF_CONFIG", "") or "{}"
    shape = '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}'
    try:
        tf_config = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"TF_CONFIG is not JSON ({e}); it was {raw[:200]!r}.") from None
    if not isinstance(tf_config, dict) or not isinstance(tf_config.get("cluster"), dict) or "task" not in tf_config:
        raise ValueError(f"distribution=multi_worker needs TF_CONFIG = {shape}; got {raw[:200]!r}.")
    cluster, task = tf_config["cluster"], tf_config["task"]
    if "ps" in cluster:
        raise ValueError("TF_CONFIG describes parameter servers ('ps'); parameter-server training is not supported.")
    if not cluster.get("worker") and not cluster.get("chief"):
        raise ValueError(f"TF_CONFIG's cluster lists no workers; it needs {shape}; got {raw[:200]!r}.")
    for role, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise ValueError(f"TF_CONFIG cluster[{role!r}] must be a non-empty list of 'host:port'; got {addresses!r}.")
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"TF_CONFIG cluster[{role!r}] address {address!r} is not 'host:port' with a port in 1..65535."
                )
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(f"TF_CONFIG task {task!r}: its 'type' must be one of the cluster's roles {list(cluster)}.")
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ValueError(
            f"TF_CONFIG task index {index!r} is outside cluster[{task['type']!r}] "
            f"(0..{len(cluster[task['type']]) - 1})."
        )
    return tf_config


def _check_port_free(tf_config: dict[str, Any]) -> None:
    """Refuses a port another process holds (TensorFlow's own error names neither the port nor TF_CONFIG)."""
    task = tf_config["task"]
    address = tf_config["cluster"][task["type"]][task.get("index", 0)]
    port = int(address.rpartition(":")[2])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError as e:
            raise ValueError(
                f"Port {port} of this worker's TF_CONFIG address {address!r} is in use ({e.strerror}): "
                "stop what holds it, or give this worker another port in every worker's TF_CONFIG."
            ) from None


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
    tf_config = parse_tf_config()
    _check_port_free(tf_config)
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


#: The loss task of an output's kind (a box is regressed).
LOSS_TASKS = {"classification": "classification", "regression": "regression", "box": "regression"}


def create_loss_from_config(
    config, task: str, outputs: Mapping[str, str] | None = None, num_classes: int = 0
) -> CombinedLoss | HeadLosses:
    """The combined loss of ``config.loss`` (and ``config.decision``'s network) for ``task``; with several
    ``outputs`` (``{output: kind}``), :class:`slf_tf.HeadLosses` of one loss per output (``config.heads``).
    ``num_classes`` sizes the ``forward`` candidate's noise matrix (one output only)."""
    if not outputs:
        c = config.loss
        return _create_loss(config, c.strategy, c.candidates, c.fixed, task, config.seed, num_classes=num_classes)
    heads, weights = {}, {}
    for i, (output, kind) in enumerate(outputs.items()):
        h = config.heads[output]
        strategy = h.get("strategy", "") or config.loss.strategy
        # Each output draws from its own seed, so two outputs with the same bag do not draw alike.
        heads[output] = _create_loss(
            config, strategy, h.candidates, h.fixed, LOSS_TASKS[kind], config.seed + i, h.get("validation_loss", "")
        )
        weights[output] = h.get("weight", 1.0)
    return HeadLosses(heads, weights)


def _create_loss(config, strategy, candidates, fixed, task, seed, validation_loss="", num_classes=0) -> CombinedLoss:
    c, d = config.loss, config.decision
    return create_loss(
        strategy,
        list(candidates),
        task=task,
        k=c.k,
        temperature=temperature_schedule(config),
        estimator=c.estimator,
        weighting=c.weighting,
        threshold=c.threshold,
        decision_network=d.network,
        hidden_units=d.hidden_units,
        normalize=c.normalize,
        seed=seed,
        loss=fixed or None,
        validation_loss=validation_loss or None,
        example_loss=c.get("example_loss", "fixed"),
        beta=c.softadapt_beta,
        total_steps=config.num_train_steps,
        num_classes=num_classes if "forward" in candidates else 0,
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
        trust_region=d.trust_region,
    )


BEST_METRICS = ("auto", "val_accuracy", "val_loss", "val_mae", "")
#: The validation metrics of an output's kind (``val_<output>/<metric>``).
OUTPUT_METRICS = {"classification": ("accuracy",), "regression": ("mae", "mse"), "box": ("iou", "mae")}


def best_metric(config, task: str, outputs: Mapping[str, str] | None = None) -> str:
    """The validation metric that picks the best checkpoint (``""``: none); ``auto`` = accuracy or MAE by
    task, and with several outputs ``val_score``, the mean of their headline metrics
    (:func:`slf_tf.metrics.headline_score`)."""
    name = config.best_metric
    if outputs:
        metrics = (f"val_{o}/{m}" for o, kind in outputs.items() for m in OUTPUT_METRICS[kind])
        available = ("val_score", "val_loss", *metrics)
        if name == "auto":
            return "val_score"
    else:
        if name == "auto":
            return "val_mae" if task == "regression" else "val_accuracy"
        available = ("val_loss", "val_mae") if task == "regression" else ("val_loss", "val_accuracy")
    if name and name not in available:
        raise ValueError(f"config.best_metric={name!r} is not available for {task}; use one of {list(available)}.")
    return name
