"""Metrics out of the trainer: TensorBoard (scalars, histograms, images, hparams,
custom-scalars layout) and a JSON-lines file, written by the chief only."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["MetricWriter", "selection_heatmap_png", "slf_layout", "slf_scalars"]


def _scalar(v: Any) -> float | None:
    arr = np.asarray(v)
    return float(arr) if arr.size == 1 else None


class MetricWriter:
    """Writes scalars to TensorBoard and ``metrics.jsonl``; a no-op when ``enabled`` is False."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.workdir = workdir
        if enabled:
            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115 (closed in close())
        else:
            self._tb = tf.summary.create_noop_writer()
            self._jsonl = None

    def scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
        values = {k: _scalar(v) for k, v in metrics.items()}
        values = {k: v for k, v in values.items() if v is not None}
        if not self.enabled:
            return
        with self._tb.as_default(step=step):
            for k, v in values.items():
                tf.summary.scalar(k, v)
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()

    def histogram(self, step: int, name: str, values: Any) -> None:
        if self.enabled:
            with self._tb.as_default(step=step):
                tf.summary.histogram(name, values)

    def image_png(self, step: int, name: str, png: bytes) -> None:
        if self.enabled:
            with self._tb.as_default(step=step):
                tf.summary.image(name, tf.image.decode_png(png)[None])

    def hparams(self, flat: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from tensorboard.plugins.hparams import api as hp

        clean = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in flat.items()}
        with self._tb.as_default(step=0):
            hp.hparams(clean)

    def layout(self, layout_proto) -> None:
        if not self.enabled:
            return
        from tensorboard.plugins.custom_scalar import summary as cs_summary

        with self._tb.as_default(step=0):
            tf.summary.experimental.write_raw_pb(cs_summary.pb(layout_proto).SerializeToString(), step=0)

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def slf_scalars(loss: Any, metrics: Mapping[str, Any], frequency: np.ndarray, tags: Sequence[str]) -> dict[str, float]:
    """The ``slf/`` scalars of a log step: per candidate, and the decision update's own.

    Args:
      loss: the combined loss (its state holds the last step's choice).
      metrics: the latest step's metrics (and the last decision update's).
      frequency: the realised selection frequency since the previous log step, ``[N]``.
      tags: TensorBoard-safe candidate names.
    """
    per_candidate = {
        "loss": loss.last_losses.numpy(),
        "selection_probability": loss.selection_probabilities().numpy(),
        "selection_frequency": frequency,
        "weight": loss.last_weights.numpy(),
        "coefficient": loss.last_coefficients.numpy(),
    }
    if "scores" in metrics:  # -dJ/dc of the last decision update
        per_candidate["score"] = np.asarray(metrics["scores"])
    out = {f"slf/{q}/{tag}": float(v[i]) for q, v in per_candidate.items() for i, tag in enumerate(tags)}
    for key in ("hypergrad_norm", "val_loss_lookahead", "decision_skipped"):
        if key in metrics:
            out[f"slf/{key}"] = float(metrics[key])
    if hasattr(loss, "temperature"):
        out["slf/temperature"] = float(loss.temperature())
    out["slf/masked_count"] = float(np.sum(loss.masked_counts.numpy()))
    out["slf/skipped_steps"] = float(loss.skipped_steps.numpy())
    return out


def slf_layout(names: Sequence[str]):
    """Custom-scalars layout: one chart per quantity, one line per candidate loss."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    def chart(title, prefix):
        return layout_pb2.Chart(
            title=title,
            multiline=layout_pb2.MultilineChartContent(tag=[rf"slf/{prefix}/.*"]),
        )

    return layout_pb2.Layout(
        category=[
            layout_pb2.Category(
                title="SLF: per candidate loss",
                chart=[
                    chart("candidate loss value", "loss"),
                    chart("selection probability", "selection_probability"),
                    chart("realised selection frequency", "selection_frequency"),
                    chart("weight b_i", "weight"),
                    chart("coefficient c_i", "coefficient"),
                    chart("hypergradient score s_i", "score"),
                ],
            )
        ]
    )


def selection_heatmap_png(names: Sequence[str], steps: Sequence[int], probabilities: np.ndarray) -> bytes:
    """A heatmap (losses x steps) of the selection probability, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probabilities = np.asarray(probabilities).T  # [N, T]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.12 * len(steps) + 3), 0.45 * len(names) + 1.2))
    im = ax.imshow(probabilities, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks(range(len(names)), labels=list(names))
    ticks = np.linspace(0, len(steps) - 1, num=min(6, len(steps))).astype(int)
    ax.set_xticks(ticks, labels=[str(steps[i]) for i in ticks])
    ax.set_xlabel("step")
    ax.set_title("selection probability")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
