"""Metrics out of the trainer: TensorBoard (scalars, histograms, images, hparams,
custom-scalars layout) and a JSON-lines file, written by the chief only."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["MetricWriter", "route", "selection_heatmap_png", "slf_layout", "slf_scalars"]


def _scalar(v: Any) -> float | None:
    arr = np.asarray(v)
    return float(arr) if arr.size == 1 else None


#: Counters that are zero on a healthy run: written (under ``diagnostics/``) only once they are not.
DIAGNOSTICS = ("slf/decision_skipped", "slf/masked_count", "slf/skipped_steps", "train/main_skipped")


def candidate_run_name(name: str, tag: str) -> str:
    """A candidate's TensorBoard run (a folder under ``candidates/``): its own name where a folder can carry it."""
    return tag if "/" in name or "\\" in name or name.startswith(".") or not name.strip() else name


#: ``eval/<head><metric>`` -> (run, tag prefix): the validation and test curves, and both at the best checkpoint.
_EVAL_ROUTES = (
    ("val_", "validation", "metrics/"),
    ("test_", "test", "metrics/"),
    ("best_test_", "test", "metrics_at_best/"),
    ("best_", "validation", "metrics_at_best/"),
)


def route(key: str, candidates: Mapping[str, str]) -> tuple[str, str]:
    """Where a flat metric name of ``metrics.jsonl`` goes in TensorBoard: ``(run, tag)``.

    Train, validation and test share the tags ``metrics/<name>`` in runs of their own, so one chart overlays
    them in distinct colours (as Keras writes ``train/`` and ``validation/``); per-candidate quantities go to
    one run per candidate (``candidates`` maps a log-safe tag to its run); the decision's scalars to ``decision``.
    """
    if key in DIAGNOSTICS:
        return "decision", "diagnostics/" + key.partition("/")[2]
    prefix, _, last = key.rpartition("/")
    if prefix in _PER_CANDIDATE_TAGS and last in candidates:
        return f"candidates/{candidates[last]}", prefix
    group, _, name = key.partition("/")
    if group == "train":
        return "train", ("speed/" if name == "steps_per_second" else "metrics/") + name
    if group == "eval":
        for head, run, tag in _EVAL_ROUTES:
            if name.startswith(head):
                return run, tag + name[len(head) :]
    if group == "slf":
        return "decision", key
    return ".", key


def _hparams_copies(per_run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The results HParams reports, as tags of the root run (``hparams/...``).

    HParams finds a metric in ``os.path.join(session, group)``: for a session in the root run that is
    ``./validation``, which matches no run, so the values it reports must live in the root run itself.
    """
    out = {}
    for tag, value in per_run.get("validation", {}).items():
        if tag.startswith("metrics_at_best/"):
            out[f"hparams/best_validation_{tag.partition('/')[2]}"] = value
    for tag, value in per_run.get("test", {}).items():
        group, _, name = tag.partition("/")
        if group == "metrics_at_best":
            out[f"hparams/test_{name}_at_best"] = value
        elif group == "metrics":
            out[f"hparams/test_{name}"] = value
    return out


def _for_display(tag: str, value: float) -> tuple[str, float]:
    """Candidate losses span decades (squared hinge ~60 beside GCE ~0.3): TensorBoard gets log10 of them."""
    if tag == "slf/loss":
        return "slf/log10_loss", math.log10(max(value, 1e-12))
    return tag, value


class MetricWriter:
    """Writes scalars to TensorBoard and ``metrics.jsonl``; a no-op when ``enabled`` is False.

    ``metrics.jsonl`` keeps the flat names (``train/accuracy``, ``slf/weight/<candidate>``); TensorBoard gets
    them in named runs (:func:`route`). ``candidates`` maps each candidate's log-safe tag to its display name.
    """

    def __init__(self, workdir: str, enabled: bool = True, candidates: Mapping[str, str] | None = None,
                 jsonl: bool = True):  # fmt: skip
        self.enabled = enabled
        self.workdir = workdir
        self.runs = {tag: candidate_run_name(name, tag) for tag, name in (candidates or {}).items()}
        self.root = os.path.join(workdir, "tensorboard") if jsonl else workdir
        self._writers: dict[str, Any] = {}
        self._jsonl = None
        if enabled:
            self._writers["."] = tf.summary.create_file_writer(self.root)
            if jsonl:
                self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115 (closed in close())

    def _writer(self, run: str):
        if run not in self._writers:
            self._writers[run] = tf.summary.create_file_writer(os.path.join(self.root, run))
        return self._writers[run]

    def scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
        values = {k: _scalar(v) for k, v in metrics.items()}
        values = {k: v for k, v in values.items() if v is not None}
        if not self.enabled:
            return
        per_run: dict[str, dict[str, float]] = {}
        for key, value in values.items():
            if key in DIAGNOSTICS and value == 0:
                continue
            run, tag = route(key, self.runs)
            tag, shown = _for_display(tag, value)
            per_run.setdefault(run, {})[tag] = shown
        copies = _hparams_copies(per_run)
        if copies:
            per_run.setdefault(".", {}).update(copies)
        for run, tags in per_run.items():
            with self._writer(run).as_default(step=step):
                for tag, value in tags.items():
                    tf.summary.scalar(tag, value)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
            self._jsonl.flush()

    def image_png(self, step: int, name: str, png: bytes, run: str = "decision") -> None:
        if self.enabled:
            with self._writer(run).as_default(step=step):
                tf.summary.image(name, tf.image.decode_png(png)[None])

    def text(self, step: int, name: str, markdown: str, run: str = "decision") -> None:
        if self.enabled:
            with self._writer(run).as_default(step=step):
                tf.summary.text(name, markdown)

    def hparams(self, flat: Mapping[str, Any], trial_id: str, headlines: Sequence[str]) -> None:
        """The run's config for TensorBoard's HParams: what tells runs apart first, integers as integers, and
        named metrics (validation and test at the best checkpoint, test at the last step) of each of
        ``headlines`` (:func:`slf_tf.metrics.headlines`: ``accuracy``, or ``<output>/<metric>`` per output)."""
        if not self.enabled:
            return
        from tensorboard.plugins.hparams import api as hp

        # TensorBoard lists hparams by name (those that differ between runs first) and shows the first five: the
        # fields that tell runs apart get names that sort first, and their own name as the display name.
        first = [k for k in HPARAMS_FIRST if k in flat]
        # Several outputs: each output's bag and strategy (config.heads.<output>) right after the shared ones.
        per_output = sorted(k for k in flat if k.startswith("heads.") and k.endswith((".candidates", ".strategy")))
        at = first.index("loss.candidates") + 1 if "loss.candidates" in first else len(first)
        first[at:at] = per_output
        names = {k: f"!{i:02d} {k}" for i, k in enumerate(first)}
        params = {hp.HParam(names.get(k, k), display_name=k): _hparam_value(v) for k, v in flat.items()}
        metrics = [
            metric
            for headline in headlines
            for metric in (
                hp.Metric(f"hparams/best_validation_{headline}", display_name=f"best validation {headline}"),
                hp.Metric(f"hparams/test_{headline}_at_best", display_name=f"test {headline} at the best checkpoint"),
                hp.Metric(f"hparams/test_{headline}", display_name=f"test {headline} at the last step"),
            )
        ]
        with self._writers["."].as_default(step=0):
            hp.hparams_config(hparams=list(params), metrics=metrics)
            hp.hparams(params, trial_id=trial_id)

    def layout(self, layout_proto) -> None:
        if not self.enabled:
            return
        from tensorboard.plugins.custom_scalar import summary as cs_summary

        with self._writers["."].as_default(step=0):
            tf.summary.experimental.write_raw_pb(cs_summary.pb(layout_proto).SerializeToString(), step=0)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        if self._jsonl is not None:
            self._jsonl.close()


#: HParams columns shown first (TensorBoard shows the first few by default): what tells runs apart.
HPARAMS_FIRST = (
    "loss.strategy",
    "loss.candidates",
    "loss.k",
    "data.name",
    "data.label_noise",
    "data.noise_kind",
    "model.name",
    "seed",
    "optimizer.name",
    "optimizer.learning_rate",
    "num_train_steps",
    "batch_size",
    "decision.restart_fraction",
)


def _hparam_value(v: Any) -> bool | float | str:
    """HParams shows numbers with five significant digits (64 as 64.000): integers go as their digits."""
    if isinstance(v, bool) or isinstance(v, float):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (tuple, list)):
        return ", ".join(str(x) for x in v)
    return str(v)


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
    for key in ("hypergrad_norm", "val_loss_lookahead", "virtual_scale", "decision_skipped", "examples_kept"):
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
    ("loss", "candidate loss L_i (train batch), log10"),
)


_PER_CANDIDATE_TAGS = {f"slf/{quantity}" for quantity, _ in PER_CANDIDATE}


def slf_layout(headlines: str | Sequence[str] = "accuracy", keras_metrics: bool = False, trust_region: bool = False):
    """Custom-scalars layout: one chart per quantity, one line (a run) per candidate loss; train, validation
    and test overlaid per metric, for each of ``headlines`` (one per output of a multi-output model;
    ``keras_metrics``: the ``epoch_*`` tags of ``keras.callbacks.TensorBoard``; ``trust_region``: a chart of
    the virtual step's scale)."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    def chart(title, regex):
        return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex]))

    per_candidate = [
        chart(title, rf"^slf/{'log10_loss' if quantity == 'loss' else quantity}$")
        for quantity, title in PER_CANDIDATE
        if not (keras_metrics and quantity == "score")  # fit's logs carry no per-candidate scores
    ]
    headlines = [headlines] if isinstance(headlines, str) else list(headlines)
    quality = [
        chart(f"{h}: train (on its own labels, noisy if corrupted), validation, test", rf"^metrics/{h}$")
        for h in headlines
    ]
    quality.append(chart("loss: train (the combined loss), validation, test", r"^metrics/loss$"))
    quality += [chart(f"at the best checkpoint: validation and test {h}", rf"^metrics_at_best/{h}$") for h in headlines]
    if keras_metrics:
        quality = [
            chart("accuracy: train (on its own labels), validation", r"^epoch_(sparse_categorical_)?accuracy$"),
            chart("loss: train (the combined loss), validation", r"^epoch_loss$"),
        ]
    decision = [
        chart("temperature", r"^slf/temperature$"),
        chart("hypergradient norm", r"^slf/hypergrad_norm$"),
        chart("validation loss after the virtual step", r"^slf/val_loss_lookahead$"),
    ]
    if trust_region:
        decision.append(chart("the virtual step's trust-region scale", r"^slf/virtual_scale$"))
    return layout_pb2.Layout(
        category=[
            layout_pb2.Category(title="SLF: per candidate loss (one run per candidate)", chart=per_candidate),
            layout_pb2.Category(title="Train, validation" + ("" if keras_metrics else ", test"), chart=quality),
            layout_pb2.Category(title="SLF: the decision update", chart=decision),
        ]
    )


def selection_heatmap_png(
    names: Sequence[str], steps: Sequence[int], probabilities: np.ndarray, restart_step: int | None = None
) -> bytes:
    """A heatmap (candidates x logged steps) of P(selected), as PNG bytes, legible as TensorBoard's thumbnail.

    Each row carries its candidate's name; the x ticks are logged steps; a restart is a labelled line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patheffects as effects
    import matplotlib.pyplot as plt

    probabilities = np.asarray(probabilities).T  # [N, T]
    steps = np.asarray(steps, float)
    half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5
    fig, ax = plt.subplots(figsize=(5.4, 0.5 * len(names) + 1.1), dpi=100)
    extent = (steps[0] - half, steps[-1] + half, len(names) - 0.5, -0.5)
    ax.imshow(probabilities, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest",
              extent=extent)  # fmt: skip
    outline = [effects.withStroke(linewidth=3, foreground="black")]
    for row, name in enumerate(names):
        ax.text(extent[0], row, f" {name}", va="center", ha="left", fontsize=15, color="white", path_effects=outline)
    ticks = steps[np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 4)).round().astype(int))]
    ax.set_xticks(ticks, labels=[f"{int(t)}" for t in ticks], fontsize=14)
    ax.set_yticks([])
    restarted = restart_step is not None and restart_step >= 0
    if restarted:
        ax.axvline(restart_step, color="red", linewidth=2.5, linestyle="--")
        ax.text(restart_step, -0.5, "restart", color="red", fontsize=14, ha="center", va="bottom")
    ax.set_title("P(selected): dark 0, yellow 1", fontsize=15, loc="left", pad=18 if restarted else 6)
    fig.tight_layout(pad=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
