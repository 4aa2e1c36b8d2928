"""Shared plumbing of the experiments: workdir preparation, JSON results, TensorBoard, figures."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf


def prepare(workdir: str, config) -> None:
    """Creates the workdir and writes config.json (raises ValueError if it cannot be written)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    except OSError as e:
        raise ValueError(f"Cannot write to workdir {workdir!r}: {e.strerror or e}.") from None


def write_json(workdir: str, name: str, payload: dict[str, Any]) -> str:
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def summary_writer(workdir: str, run: str = "") -> tf.summary.SummaryWriter:
    """A TensorBoard writer under ``workdir/tensorboard[/run]``; one run per curve to overlay."""
    return tf.summary.create_file_writer(os.path.join(workdir, "tensorboard", run))


def write_scalars(writer: tf.summary.SummaryWriter, step: int, scalars: Mapping[str, float]) -> None:
    """Writes a dict of Python/NumPy scalars at one step (eager; not for a traced hot path)."""
    with writer.as_default(step=int(step)):
        for name, value in scalars.items():
            tf.summary.scalar(name, float(value))


def write_table(workdir: str, name: str, markdown: str) -> None:
    """Writes the result table as ``name.md`` and as a TensorBoard text summary."""
    with open(os.path.join(workdir, f"{name}.md"), "w") as f:
        f.write(markdown + "\n")
    writer = summary_writer(workdir)
    with writer.as_default(step=0):
        tf.summary.text(f"{name}/table", markdown)
    writer.close()
