"""The fair protocol for the experiments trained with ``SLFModel``: every row at its best-validation checkpoint,
the sweep of the fixed losses picked on the same clean validation split (as ``benchmarks/quality.py`` does)."""

from __future__ import annotations

import ast
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

import slf_tf
from slf_tf.experiments import common

__all__ = ["BestCheckpoint", "fit_rows", "slf_callbacks", "slf_defaults", "summarise", "table", "variant_settings"]


class BestCheckpoint(keras.callbacks.Callback):
    """Scores the network on the clean validation split after each epoch; restores the best at the end.

    ``score_fn()`` returns ``(score, metrics)``: higher is better; ties keep the earlier epoch.
    """

    def __init__(self, network: keras.Model, score_fn: Callable[[], tuple[float, dict]], writer: Any = None):
        super().__init__()
        self.network, self.score_fn, self.writer = network, score_fn, writer
        self.best, self.best_epoch, self.best_metrics, self._weights = -np.inf, -1, {}, None

    def on_epoch_end(self, epoch, logs=None):
        score, metrics = self.score_fn()
        if self.writer is not None:
            common.write_scalars(self.writer, epoch + 1, {f"validation/{k}": v for k, v in metrics.items()})
        if score > self.best:
            self.best, self.best_epoch, self.best_metrics = score, epoch + 1, metrics
            self._weights = [np.array(w) for w in self.network.get_weights()]

    def on_train_end(self, logs=None):
        if self._weights is not None:
            self.network.set_weights(self._weights)


def fit_rows(
    rows: dict[str, Callable[[int], tuple[keras.Model, Any]]],
    seeds: Sequence[int],
    train: Callable[[str, keras.Model, Any, int], dict[str, Any]],
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Runs every row on every seed (seeds outermost): ``{row: {seed: result}}``.

    ``rows[name](seed)`` builds ``(model, loss)``; ``train(name, model, loss, seed)`` fits it and returns
    ``{"val": best validation score, "test": {metric: value}, ...}`` at the best checkpoint.
    """
    results: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in rows}
    start = time.time()
    for seed in seeds:
        for name, build in rows.items():
            t0 = time.time()
            model, loss = build(seed)
            result = train(name, model, loss, seed)
            result["seconds"] = time.time() - t0
            results[name][str(seed)] = result
            test = ", ".join(f"{k} {v:.4f}" for k, v in result["test"].items())
            log(f"[{time.time() - start:6.0f}s] seed {seed} {name}: val {result['val']:.4f}, test {test}")
    return results


def summarise(results: dict[str, dict[str, dict[str, Any]]], metrics: Sequence[str], reference: str) -> dict:
    """Per metric: CE (``reference``), the validation-selected sweep, the oracle, SLF, and SLF − sweep per seed.

    The sweep is, per seed, the fixed row with the best validation score; the oracle the best test score
    (which no user can know). Means over seeds; SLF − sweep also per seed.
    """
    fixed = [name for name in results if name.startswith("fixed:")]
    seeds = sorted(results[reference], key=int)
    out: dict[str, Any] = {"seeds": seeds, "picks": {}, "metrics": {}}
    picks = {s: max(fixed, key=lambda n, s=s: (results[n][s]["val"], -fixed.index(n))) for s in seeds}
    out["picks"] = picks
    for metric in metrics:
        sweep = [results[picks[s]][s]["test"][metric] for s in seeds]
        slf = [results["slf"][s]["test"][metric] for s in seeds]
        out["metrics"][metric] = {
            "ce": float(np.mean([results[reference][s]["test"][metric] for s in seeds])),
            "sweep": float(np.mean(sweep)),
            "oracle": float(np.mean([max(results[n][s]["test"][metric] for n in fixed) for s in seeds])),
            "slf": float(np.mean(slf)),
            "slf_minus_sweep": [float(a - b) for a, b in zip(slf, sweep, strict=True)],
        }
    variants = [name for name in results if name.startswith("slf[")]
    out["variants"] = {
        name: {metric: float(np.mean([results[name][s]["test"][metric] for s in seeds])) for metric in metrics}
        for name in variants
    }
    cost = {name: float(np.mean([r["seconds"] for r in by_seed.values()])) for name, by_seed in results.items()}
    out["slf_cost_over_sweep"] = cost["slf"] / sum(cost[n] for n in fixed)
    return out


def table(summary: dict, title: str) -> str:
    """A Markdown table of :func:`summarise`'s result (values in %)."""
    picks = ", ".join(f"{s}: {p.removeprefix('fixed:')}" for s, p in summary["picks"].items())
    rows = [
        f"{title} (seeds {', '.join(summary['seeds'])}; sweep picks {picks}; SLF cost / sweep's "
        f"{summary['slf_cost_over_sweep']:.2f})",
        "",
        "| metric | CE | sweep | oracle | SLF | SLF − sweep (mean; per seed) |",
        "|---|---|---|---|---|---|",
    ]
    for metric, m in summary["metrics"].items():
        per_seed = ", ".join(f"{100 * d:+.1f}" for d in m["slf_minus_sweep"])
        rows.append(
            f"| {metric} | {100 * m['ce']:.2f} | {100 * m['sweep']:.2f} | {100 * m['oracle']:.2f} | "
            f"{100 * m['slf']:.2f} | {100 * np.mean(m['slf_minus_sweep']):+.2f} ({per_seed}) |"
        )
    for name, means in summary.get("variants", {}).items():
        cells = ", ".join(f"{metric} {100 * v:.2f}" for metric, v in means.items())
        rows.append(f"\nNot the defaults, for the diagnosis: {name}: {cells}.")
    return "\n".join(rows)


def variant_settings(name: str) -> dict[str, Any]:
    """``SLFModel`` settings of a row named ``slf[key=value,...]`` (``{}`` for any other row)."""
    if not name.startswith("slf["):
        return {}
    pairs = (item.split("=", 1) for item in name[4:-1].split(",") if item)
    return {key.strip(): _literal(value.strip()) for key, value in pairs}


def _literal(text: str) -> Any:
    """``True``, ``0.5``, ``3`` as Python values; anything else (``sgd``) as the string it is."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def slf_defaults(config) -> dict[str, Any]:
    """SLF's arguments from ``config.slf`` (the library's defaults, as configs/digits.py sets them: one set for
    every task): ``k`` and the exponential temperature anneal ``(initial, rate, minimum)``."""
    return {"k": config.slf.k, "temperature": slf_tf.schedules.ExponentialAnneal(*config.slf.temperature)}


def slf_callbacks(config, seed: int) -> list[keras.callbacks.Callback]:
    """The restart of the library's defaults (``config.slf.restart_fraction``, 0: off); a no-op for fixed losses."""
    from slf_tf.callbacks import Restart

    fraction = config.slf.get("restart_fraction", 0.0)
    return [Restart(fraction, seed=seed)] if fraction else []
