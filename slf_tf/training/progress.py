"""What a run shows while it trains and when it ends: progress lines, the TensorBoard log action, the report."""

from __future__ import annotations

import logging as py_logging
import os
import time
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from slf_tf import metrics as metrics_lib
from slf_tf import summaries

__all__ = ["ConsoleFormatter", "Progress", "format_eta", "format_report", "setup_console_logging"]


def format_eta(seconds: float) -> str:
    """``MM:SS`` under an hour, else hours with one decimal."""
    return time.strftime("%M:%S", time.gmtime(seconds)) if seconds < 3600 else f"{seconds / 3600:.1f}h"


class Progress:
    """The log action: a progress line, TensorBoard scalars (``train/``, ``slf/``) and the selection history.

    The ETA uses the rate since the first log line: the steps before it include tracing.
    """

    def __init__(self, trainer, writer: summaries.MetricWriter, start: int):
        self.trainer, self.writer = trainer, writer
        self.last_step, self.last_time = start, time.time()
        self.steady: tuple[int, float] | None = None  # (step, time) of the first log line
        self.last_selected = trainer.loss.times_selected.numpy()
        self.steps: list[int] = []  # the selection history of the heatmap
        self.probabilities: list[np.ndarray] = []
        d = trainer.data
        noisy_labels = getattr(d, "noise_mask_train", None) is not None and d.task in ("classification", "multi_output")
        # (the metric, how the progress line names it): train accuracy is on the training split's own labels
        self.headlines = [
            (h, f"{h} (noisy labels)" if noisy_labels and h.endswith("accuracy") else h)
            for h in metrics_lib.headlines(d.task, d.outputs)
        ]

    def __call__(self, step: int, metrics: dict[str, tf.Tensor]) -> None:
        tr, loss = self.trainer, self.trainer.loss
        now = time.time()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        shown = ("loss", "accuracy", "mae", "main_skipped")  # and every output's own (``box/iou``)
        scalars = {f"train/{k}": v for k, v in metrics.items() if k in shown or "/" in k}
        scalars["train/steps_per_second"] = rate
        selected = loss.times_selected.numpy()
        frequency = (selected - self.last_selected) / max(1, step - self.last_step)
        scalars.update(summaries.slf_scalars(loss, metrics, frequency, loss.tags))
        self.writer.scalars(step, scalars)
        self.steps.append(step)
        self.probabilities.append(loss.selection_probabilities().numpy())
        self.last_step, self.last_time, self.last_selected = step, now, selected
        remaining = tr.config.num_train_steps - step
        if self.steady is None:
            self.steady = (step, now)
            eta = "after warm-up" if remaining else "00:00"
        else:
            steady_rate = (step - self.steady[0]) / max(now - self.steady[1], 1e-9)
            eta = format_eta(remaining / max(steady_rate, 1e-9))
        skipped = int(loss.skipped_steps.numpy())
        logging.info(
            "step %d/%d  loss %.4f  %s  %.1f steps/s  ETA %s%s",
            step,
            tr.config.num_train_steps,
            float(metrics["loss"]),
            "  ".join(f"{label} {float(metrics[h]):.4f}" for h, label in self.headlines),
            rate,
            eta,
            f"  ({skipped} steps skipped so far: no finite loss)" if skipped else "",
        )


def _test_line(label: str, step: int, test: dict[str, float]) -> str:
    if "accuracy" in test:
        return f"{label:<26} step {step:>6}: test accuracy {test['accuracy']:.4f}  (test loss {test['loss']:.4f})"
    if "mae" in test:
        return f"{label:<26} step {step:>6}: test MAE {test['mae']:.4f}  MSE {test['mse']:.4f}  (standardised)"
    per_output = "  ".join(f"{k} {v:.4f}" for k, v in test.items() if "/" in k or k == "score")  # several outputs
    return f"{label:<26} step {step:>6}: test {per_output}  (test loss {test['loss']:.4f})"


def format_report(results: dict[str, Any], workdir: str) -> str:
    """The human summary printed at the end of a run: the last step, the best checkpoint, the decision."""
    lines = [_test_line("Last", results["step"], results["test"])]
    best = results.get("best")
    if best:
        lines.append(_test_line(f"Best ({best['metric']})", best["step"], best["test"]))
    lines.append(f"Loss strategy: {results['strategy']}.  Over the last epoch the decision network chose:")
    width = max(len(n) for n in results["decision"]) + 2
    lines.append(f"  {'candidate loss':<{width}} {'mean P(selected)':>17} {'mean weight':>12}")
    for name, d in sorted(results["decision"].items(), key=lambda kv: -kv[1]["selection_probability"]):
        lines.append(f"  {name:<{width}} {d['selection_probability']:>17.3f} {d['weight']:>12.3f}")
    lines.append(f"TensorBoard:  tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")
    lines.append(
        "  Custom Scalars overlays the candidates per quantity. TensorBoard's default 'Ignore outliers in chart "
        "scaling' clips the top and bottom 5% of a chart: untick it to see every candidate whole."
    )
    return "\n".join(lines)


class ConsoleFormatter(py_logging.Formatter):
    """``HH:MM:SS message`` for progress, with the level named for warnings and errors (absl's
    ``I1202 13:16:10.894502 139907150834560 trainer.py:482]`` prefix says nothing a reader needs)."""

    def format(self, record: py_logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno < py_logging.WARNING else f"{record.levelname}: "
        text = f"{stamp} {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_console_logging() -> None:
    """Plain progress lines, and TensorFlow's and Keras' own INFO lines (saver, SavedModel) hidden."""

    def keep(record: py_logging.LogRecord) -> bool:
        noisy = f"{os.sep}tensorflow{os.sep}" in record.pathname or f"{os.sep}keras{os.sep}" in record.pathname
        return record.levelno >= py_logging.WARNING or not noisy

    handler = logging.get_absl_handler()
    handler.setFormatter(ConsoleFormatter())
    py_logging.getLogger("absl").addFilter(keep)
    tf.get_logger().setLevel(py_logging.WARNING)
