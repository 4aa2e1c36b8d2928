"""Shared benchmark plumbing: interleaved timing, medians, machine info, table + JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.grappler import tf_optimizer

# Bookkeeping nodes that run no kernel worth counting.
_FREE_OPS = frozenset({"Const", "Identity", "NoOp", "Placeholder", "_Arg", "_Retval"})


def machine_info() -> dict:
    """What the numbers were measured on."""
    import keras
    import tensorflow_probability as tfp

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), "-m", *sys.argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_probability": tfp.__version__,
    }


def interleaved_medians(
    variants: dict[str, Callable[[], object]], rounds: int, inner: int, warmup: int = 3
) -> dict[str, dict[str, float]]:
    """Times each variant ``inner`` calls per round, variants interleaved within each round.

    Interleaving exposes every variant to the same machine noise; the median over
    rounds discards outliers. Returns per-variant median and IQR in milliseconds per call.
    """
    for fn in variants.values():
        for _ in range(warmup):
            _block(fn())
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            fn = variants[name]
            start = time.perf_counter()
            for _ in range(inner):
                out = fn()
            _block(out)
            samples[name].append((time.perf_counter() - start) / inner * 1e3)
    result = {}
    for name, xs in samples.items():
        q = statistics.quantiles(xs, n=4)
        result[name] = {"median_ms": statistics.median(xs), "q1_ms": q[0], "q3_ms": q[2], "rounds": len(xs)}
    return result


def _block(out) -> None:
    """Forces the computation to finish (results are materialised on the host)."""
    for t in tf.nest.flatten(out):
        if hasattr(t, "numpy"):
            t.numpy()


def graph_ops(function: tf.types.experimental.ConcreteFunction) -> int:
    """The ops a traced step runs after TensorFlow's graph optimizer (Grappler), nested functions included.

    On a small model a step's fixed cost is mostly per-op overhead, so this count explains its time and,
    unlike the time, is the same on every machine (for one TensorFlow version).
    """
    graph = function.graph
    meta = tf.compat.v1.train.export_meta_graph(graph=graph, graph_def=graph.as_graph_def(add_shapes=True))
    meta.collection_def["train_op"].node_list.value.extend(t.name for t in function.outputs)
    config = config_pb2.ConfigProto()
    config.graph_options.rewrite_options.min_graph_nodes = -1  # optimise however small the graph
    optimized = tf_optimizer.OptimizeGraph(config, meta)
    nodes = [*optimized.node, *(n for f in optimized.library.function for n in f.node_def)]
    return sum(n.op not in _FREE_OPS for n in nodes)


def format_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub-markdown table."""
    cells = [[str(c) for c in headers]] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_results(out_dir: str, name: str, table: str, payload: dict) -> tuple[str, str]:
    """Writes ``<name>.md`` (the table) and ``<name>.json`` (everything) into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    md, js = os.path.join(out_dir, f"{name}.md"), os.path.join(out_dir, f"{name}.json")
    with open(md, "w") as f:
        f.write(table + "\n")
    with open(js, "w") as f:
        json.dump({"machine": machine_info(), **payload}, f, indent=2)
    return md, js
