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
    """Writes scalars to TensorBoard and ``metrics.jsonl``; a no-op when ``enabled`` is False.

    Per-candidate scalars (``slf/<quantity>/<candidate>``) go to one TensorBoard
    run per candidate, ``tensorboard/candidates/<candidate>/``, under the tag
    ``slf/<quantity>``. TensorBoard then overlays the candidates in one chart per
    quantity, each with its own colour and legend entry, the way Keras overlays
    train and validation. ``metrics.jsonl`` keeps the flat names.
    """

    def __init__(self, workdir: str, enabled: bool = True, candidates: Sequence[str] = ()):
        self.enabled = enabled
        self.workdir = workdir
        self.candidates = tuple(candidates)
        if enabled:
            root = os.path.join(workdir, "tensorboard")
            self._tb = tf.summary.create_file_writer(root)
            self._runs = {c: tf.summary.create_file_writer(os.path.join(root, "candidates", c)) for c in candidates}
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115 (closed in close())
        else:
            self._tb = tf.summary.create_noop_writer()
            self._runs = {}
            self._jsonl = None

    def scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
        values = {k: _scalar(v) for k, v in metrics.items()}
        values = {k: v for k, v in values.items() if v is not None}
        if not self.enabled:
            return
        per_run: dict[Any, dict[str, float]] = {}
        for key, value in values.items():
            prefix, _, candidate = key.rpartition("/")
            routed = prefix in _PER_CANDIDATE_TAGS and candidate in self._runs
            writer, tag = (self._runs[candidate], prefix) if routed else (self._tb, key)
            per_run.setdefault(writer, {})[tag] = value
        for writer, tags in per_run.items():
            with writer.as_default(step=step):
                for tag, value in tags.items():
                    tf.summary.scalar(tag, value)
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
            for writer in (self._tb, *self._runs.values()):
                writer.flush()

    def close(self) -> None:
        if self.enabled:
            for writer in (self._tb, *self._runs.values()):
                writer.close()
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
    for key in ("hypergrad_norm", "val_loss_lookahead", "decision_skipped", "examples_kept"):
        if key in metrics:
            out[f"slf/{key}"] = float(metrics[key])
    if hasattr(loss, "temperature"):
        out["slf/temperature"] = float(loss.temperature())
    out["slf/masked_count"] = float(np.sum(loss.masked_counts.numpy()))
    out["slf/skipped_steps"] = float(loss.skipped_steps.numpy())
    return out


PER_CANDIDATE = (
    ("selection_probability", "selection probability P(selected)"),
    ("weight", "weight b_i"),
    ("coefficient", "coefficient c_i = a_i b_i"),
    ("selection_frequency", "realised selection frequency"),
    ("score", "hypergradient score -dJ/dc_i"),
    ("loss", "candidate loss L_i (train batch)"),
)


_PER_CANDIDATE_TAGS = {f"slf/{quantity}" for quantity, _ in PER_CANDIDATE}


def slf_layout(names: Sequence[str] = ()):
    """Custom-scalars layout: one chart per quantity, one line (a run) per candidate loss."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    del names  # the candidates are runs: every chart overlays all of them

    def chart(title, regex):
        return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex]))

    per_candidate = [chart(title, rf"^slf/{quantity}$") for quantity, title in PER_CANDIDATE]
    decision = [
        chart("temperature", r"^slf/temperature$"),
        chart("hypergradient norm", r"^slf/hypergrad_norm$"),
        chart("validation loss after the virtual step", r"^slf/val_loss_lookahead$"),
        chart("accuracy / MAE", r"^(train/accuracy|train/mae|eval/val_accuracy|eval/val_mae)$"),
    ]
    return layout_pb2.Layout(
        category=[
            layout_pb2.Category(title="SLF: per candidate loss (one run per candidate)", chart=per_candidate),
            layout_pb2.Category(title="SLF: the decision update", chart=decision),
        ]
    )


def selection_heatmap_png(names: Sequence[str], steps: Sequence[int], probabilities: np.ndarray) -> bytes:
    """A heatmap (candidates x steps) of the selection probability, as PNG bytes.

    Full candidate names on the y axis; the x axis is in steps with ticks spaced
    for any length of run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    probabilities = np.asarray(probabilities).T  # [N, T]
    steps = np.asarray(steps, float)
    half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5
    label_width = 0.09 * max(len(n) for n in names)  # inches of y labels
    fig, ax = plt.subplots(figsize=(8.0 + label_width, 0.42 * len(names) + 1.5))
    extent = (steps[0] - half, steps[-1] + half, len(names) - 0.5, -0.5)
    im = ax.imshow(probabilities, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest",
                   extent=extent)  # fmt: skip
    ax.set_yticks(range(len(names)), labels=list(names), fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    ax.tick_params(axis="x", labelsize=9)
    ax.set_xlabel("step")
    ax.set_title("P(selected) per candidate loss")
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.02)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
