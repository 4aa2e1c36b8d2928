"""Checks of a trainer config, run before any data, model or file is touched.

Every name is checked against the allowed ones and every number for being
finite and in range; each error names the field, the bad value and what is
allowed. Old field names get an error naming the new ones.
"""

from __future__ import annotations

import math
from typing import Any

from slf_tf import data as data_lib
from slf_tf import decision as decision_lib
from slf_tf import heads as heads_lib
from slf_tf import hypergrad, losses, models, selection
from slf_tf.example_weighting import EXAMPLE_LOSSES
from slf_tf.stochastic_loss import STRATEGIES
from slf_tf.training import factories, restart

__all__ = ["RENAMED", "validate_config", "with_overrides"]

# Fields that were renamed: the old name in a config gets an error naming the new one.
RENAMED = {
    "strategy": "distribution (the tf.distribute strategy; loss.strategy is the kind of loss)",
    "slf": "decision (decision_every -> decision.every; the other fields keep their names)",
    "loss.decision": "decision.network",
    "loss.hidden_units": "decision.hidden_units",
    "debug_kill_at_step": "nothing: it was a test hook and is gone",
}

INF = math.inf
# field -> (integer?, low, high, low included?, high included?)
NUMBERS: dict[str, tuple[bool, float, float, bool, bool]] = {
    "seed": (True, 0, 2**31 - 1, True, True),
    "multi_worker_timeout_s": (False, 0, INF, True, False),
    "num_train_steps": (True, 1, INF, True, False),
    "batch_size": (True, 1, 2**20, True, True),
    "log_every_steps": (True, 1, INF, True, False),
    "eval_every_steps": (True, 1, INF, True, False),
    "checkpoint_every_steps": (True, 1, INF, True, False),
    "max_checkpoints": (True, 1, INF, True, False),
    "early_stopping_patience": (True, 0, INF, True, False),
    "data.val_fraction": (False, 0, 1, False, False),
    "data.test_fraction": (False, 0, 1, True, False),
    "data.selection_fraction": (False, 0, 1, True, False),
    "data.max_train_examples": (True, 0, INF, True, False),
    "data.label_noise": (False, 0, 1, True, False),
    "data.outlier_fraction": (False, 0, 1, True, False),
    "data.outlier_scale": (False, 0, INF, False, False),
    "data.max_load_gb": (False, 0, INF, False, False),
    "model.dropout": (False, 0, 1, True, False),
    "optimizer.learning_rate": (False, 0, INF, False, False),
    "optimizer.momentum": (False, 0, 1, True, False),
    "optimizer.weight_decay": (False, 0, INF, True, False),
    "optimizer.clipnorm": (False, 0, INF, True, False),
    "loss.threshold": (False, 0, INF, False, False),
    "loss.softadapt_beta": (False, 0, INF, False, False),
    "loss.temperature.initial": (False, 0, INF, False, False),
    "loss.temperature.rate": (False, 0, INF, True, False),
    "loss.temperature.minimum": (False, 0, INF, False, False),
    "decision.hidden_units": (True, 1, 2**16, True, True),
    "decision.every": (True, 1, INF, True, False),
    "decision.lookahead_lr": (False, 0, INF, False, False),
    "decision.learning_rate": (False, 0, INF, True, False),
    "decision.entropy_weight": (False, 0, INF, True, False),
    "decision.val_batch_size": (True, 1, 2**20, True, True),
    "decision.fd_epsilon": (False, 0, INF, False, False),
    "decision.clipnorm": (False, 0, INF, True, False),
    "decision.restart_fraction": (False, 0, 1, True, False),
    "decision.restart_at_commitment": (False, 0, 1, True, True),
    "decision.restart_min_epochs": (False, 0, INF, True, False),
}

#: Numbers only some configs have (``digits_boxes``): checked where present, by the same rules.
OPTIONAL_NUMBERS = {
    "data.canvas": (True, 8, 256, True, True),
    "data.box_jitter": (False, 0, INF, True, False),
    "data.copies": (True, 1, 100, True, True),
}


def _get(config, path: str) -> Any:
    node = config
    for part in path.split("."):
        node = node[part]
    return node


def with_overrides(config, overrides: dict[str, Any]):
    """A copy of ``config`` with dotted ``overrides`` set (``{"decision.every": 2}``), as on the command line."""
    c = config.copy_and_resolve_references()
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        (_get(c, ".".join(path)) if path else c)[leaf] = value
    return c


def _has(config, path: str) -> bool:
    node = config
    for part in path.split("."):
        if not hasattr(node, "get") or part not in node:
            return False
        node = node[part]
    return True


def _rule(integer: bool, low: float, high: float, low_in: bool, high_in: bool) -> str:
    kind = "an integer" if integer else "a finite number"
    lo = f"{'>=' if low_in else '>'} {low:g}"
    return (
        f"{kind} {lo}"
        if high == INF
        else f"{kind} in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
    )


def check_number(config, path: str) -> None:
    """Raises ``ValueError`` naming ``config.<path>`` unless its value obeys :data:`NUMBERS`."""
    integer, low, high, low_in, high_in = NUMBERS.get(path) or OPTIONAL_NUMBERS[path]
    value = _get(config, path)
    numeric = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = numeric and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if low_in else value > low) and (value <= high if high_in else value < high)
    if not ok:
        raise ValueError(f"config.{path} must be {_rule(integer, low, high, low_in, high_in)}; got {value!r}.")


def _check_renamed(config) -> None:
    for old, new in RENAMED.items():
        if _has(config, old):
            raise ValueError(f"config.{old} was renamed: use config.{new}.")


def _check_names(config, task: str) -> None:
    if config.distribution not in factories.DISTRIBUTION_STRATEGIES:
        factories.create_distribution_strategy(config.distribution)  # raises with the allowed names
    name = config.data.name
    known = (*data_lib.EMBEDDED, *data_lib.IDX_DATASETS, *data_lib.MULTI_OUTPUT)
    if name not in known and not name.startswith("tfds:"):
        raise ValueError(f"Unknown dataset {name!r}; known: {list(data_lib.DATASETS)}.")
    if config.data.noise_kind not in data_lib.NOISE_KINDS:
        raise ValueError(f"Unknown data.noise_kind {config.data.noise_kind!r}; known: {list(data_lib.NOISE_KINDS)}.")
    if config.model.name not in models.MODELS:
        raise ValueError(f"Unknown model {config.model.name!r}; known: {list(models.MODELS)}.")
    for label, value in (("optimizer", config.optimizer.name), ("decision optimizer", config.decision.optimizer)):
        if value not in factories.OPTIMIZERS:
            raise ValueError(f"Unknown {label} {value!r}; known: {list(factories.OPTIMIZERS)}.")
    if config.loss.strategy not in STRATEGIES:
        raise ValueError(f"Unknown loss strategy {config.loss.strategy!r}; known: {sorted(STRATEGIES)}.")
    if config.loss.get("example_loss", "fixed") not in EXAMPLE_LOSSES:
        raise ValueError(f"Unknown loss.example_loss {config.loss.example_loss!r}; known: {list(EXAMPLE_LOSSES)}.")
    hypergrad.check_method(config.decision.method)
    selection.check_options(config.loss.k, config.loss.estimator, config.loss.weighting)
    if config.decision.restart_from not in restart.RESTART_FROM:
        raise ValueError(
            f"Unknown decision.restart_from {config.decision.restart_from!r}; known: {list(restart.RESTART_FROM)}."
        )
    if config.decision.network not in decision_lib.KINDS:
        raise ValueError(f"Unknown decision network {config.decision.network!r}; known: {list(decision_lib.KINDS)}.")
    if config.get("mixed_precision", "") not in ("", "float32", "mixed_bfloat16", "mixed_float16"):
        raise ValueError(
            f"Unknown mixed_precision {config.mixed_precision!r}; known: ['', 'mixed_bfloat16', 'mixed_float16']."
        )
    if config.get("jit_compile", False) not in (True, False):
        raise ValueError(f"jit_compile must be True or False; got {config.jit_compile!r}.")
    if config.get("jit_compile", False) and config.distribution != "default":
        raise ValueError(
            f"jit_compile=True runs with distribution='default' only (got {config.distribution!r}): XLA does not "
            "compile the step's cross-replica sums on CPU. Use one or the other."
        )
    outputs = data_lib.MULTI_OUTPUT.get(name)
    if not outputs and config.best_metric not in factories.BEST_METRICS:
        raise ValueError(f"Unknown best_metric {config.best_metric!r}; known: {list(factories.BEST_METRICS)}.")
    factories.best_metric(config, task, outputs)  # with several outputs: names the allowed ones


def _check_outputs(config, task: str) -> None:
    """The losses: ``config.loss.candidates`` for one output; for several, ``config.heads``, one per output."""
    heads, name = config.get("heads") or {}, config.data.name
    if task != "multi_output":
        if heads:
            raise ValueError(
                f"config.heads ({sorted(heads)}) is for datasets with several outputs ({list(data_lib.MULTI_OUTPUT)}); "
                f"{name!r} has one: remove config.heads and set config.loss.candidates."
            )
        losses.LossBag(list(config.loss.candidates), task=task)  # names, parameters, duplicates
        return
    outputs = data_lib.MULTI_OUTPUT[name]
    if sorted(heads) != sorted(outputs):
        raise ValueError(
            f"Dataset {name!r} has outputs {list(outputs)}: config.heads needs exactly one entry each (a bag, "
            f"its fixed loss, its weight); got {sorted(heads)}."
        )
    for output, kind in outputs.items():
        h, where = heads[output], f"config.heads.{output}"
        strategy = h.get("strategy", "") or config.loss.strategy
        if strategy not in STRATEGIES:
            raise ValueError(f"Unknown {where}.strategy {strategy!r}; known: {sorted(STRATEGIES)}.")
        if heads_lib.weights_examples(STRATEGIES[strategy]):
            allowed = sorted(s for s, cls in STRATEGIES.items() if not heads_lib.weights_examples(cls))
            raise ValueError(
                f"{where}: strategy {strategy!r} weights examples from one loss, which several outputs cannot share; "
                f"use one of {allowed}."
            )
        candidates, loss_task = list(h.candidates), factories.LOSS_TASKS[kind]
        if len(candidates) > MAX_CANDIDATES:
            raise ValueError(f"{where}.candidates lists {len(candidates)} losses; at most {MAX_CANDIDATES}.")
        losses.LossBag(candidates, task=loss_task)  # names, parameters, duplicates (the error names the bad one)
        if h.fixed not in candidates:
            raise ValueError(f"{where}.fixed={h.fixed!r} is not in {where}.candidates {candidates}.")
        if h.get("validation_loss", ""):
            losses.get(h.validation_loss, task=loss_task)
        weight = h.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0 < weight < INF):
            raise ValueError(f"{where}.weight must be a finite number > 0; got {weight!r}.")


#: Sizes past these fail only after minutes (out of memory, or a step that never finishes tracing).
MAX_K, MAX_CANDIDATES, MAX_LAYER_WIDTH = 2**16, 64, 2**16


def _check_sizes(config) -> None:
    """Refuses sizes that would take minutes to fail, naming the field and the limit."""
    k = config.loss.k
    if isinstance(k, int) and not isinstance(k, bool) and k > MAX_K:
        raise ValueError(f"config.loss.k={k} exceeds {MAX_K} draws (each step holds [k, candidates] samples).")
    n = len(config.loss.candidates)
    if n > MAX_CANDIDATES:
        raise ValueError(
            f"config.loss.candidates lists {n} losses; at most {MAX_CANDIDATES} (each is traced into the step)."
        )
    for path in ("model.hidden_units", "model.filters"):
        if not _has(config, path):
            continue
        widths = _get(config, path)
        if not isinstance(widths, (tuple, list)) or not all(
            isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_LAYER_WIDTH for w in widths
        ):
            raise ValueError(
                f"config.{path} must be a tuple of integers in [1, {MAX_LAYER_WIDTH}], one per layer; got {widths!r}."
            )


def _check_combinations(config) -> None:
    t, k = config.loss.temperature, config.loss.k
    if t.kind in ("exponential", "cosine") and t.initial < t.minimum:
        raise ValueError(
            f"config.loss.temperature.initial ({t.initial!r}) is below temperature.minimum ({t.minimum!r}); "
            "the schedule would start at the minimum. Raise initial or lower minimum."
        )
    if isinstance(k, int) and config.loss.threshold > k:
        raise ValueError(
            f"config.loss.threshold={config.loss.threshold!r} exceeds k={k}: K draws give soft counts <= K, so the "
            "gate would only ever keep the top candidate. Use a threshold in (0, k]."
        )
    if config.data.test_fraction == 0 and (config.data.name in data_lib.EMBEDDED or config.data.name in
                                           data_lib.MULTI_OUTPUT):  # fmt: skip
        raise ValueError(f"config.data.test_fraction=0 leaves {config.data.name!r} no test split; use a value > 0.")
    if config.data.val_fraction + config.data.test_fraction >= 1:
        raise ValueError(
            f"config.data.val_fraction + test_fraction must be < 1; got {config.data.val_fraction!r} + "
            f"{config.data.test_fraction!r}."
        )


def validate_config(config) -> None:
    """Checks every name and number a run needs, before any data, model or file is touched."""
    _check_renamed(config)
    for path in NUMBERS:
        check_number(config, path)
    for path in OPTIONAL_NUMBERS:
        if _has(config, path):
            check_number(config, path)
    task = data_lib.dataset_task(config.data.name)
    _check_names(config, task)
    _check_outputs(config, task)
    _check_sizes(config)
    _check_combinations(config)
    factories.temperature_schedule(config)
    factories.decision_settings(config)  # virtual_step, method
