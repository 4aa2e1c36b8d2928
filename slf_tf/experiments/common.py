"""Shared plumbing of the experiments: workdir preparation, JSON results, figures."""

from __future__ import annotations

import json
import os
from typing import Any


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
