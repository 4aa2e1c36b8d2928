"""Sampler speed: slf_tf.gumbel_softmax vs TFP's RelaxedOneHotCategorical, forward and gradient.

Run: make bench   (or: python -m benchmarks.sampler --rounds 20 --out benchmarks/results)
Both run inside tf.function with a stateless seed argument, interleaved in one
process; the table quotes medians over rounds. Goal: ours <= 1.0x TFP at every shape.
PyTorch's F.gumbel_softmax is added as a reference column when torch is installed.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import harness  # noqa: E402
from slf_tf import gumbel  # noqa: E402

_ROUNDS = flags.DEFINE_integer("rounds", 20, "Timing rounds (medians are over these).")
_INNER = flags.DEFINE_integer("inner", 20, "Calls per variant per round.")
_OUT = flags.DEFINE_string("out", "benchmarks/results", "Where sampler.md / sampler.json go.")
SHAPES = ((1024, 10), (4096, 100), (256, 1000))
TAU = 0.5


def _variants(shape):
    logits = tf.constant(np.random.default_rng(0).normal(size=shape), tf.float32)
    weights = tf.constant(np.random.default_rng(1).normal(size=shape), tf.float32)
    seed = tf.constant([1, 2], tf.int32)  # TFP wants int32 stateless seeds

    @tf.function
    def ours_fwd(z, s):
        return gumbel.gumbel_softmax(z, TAU, seed=s)

    @tf.function
    def tfp_fwd(z, s):
        return tfp.distributions.RelaxedOneHotCategorical(TAU, logits=z).sample(seed=s)

    def grad_of(sample_fn):
        @tf.function
        def fn(z, s):
            with tf.GradientTape() as tape:
                tape.watch(z)
                loss = tf.reduce_sum(weights * sample_fn(z, s))
            return tape.gradient(loss, z)

        return fn

    ours_grad = grad_of(lambda z, s: gumbel.gumbel_softmax(z, TAU, seed=s))
    tfp_grad = grad_of(lambda z, s: tfp.distributions.RelaxedOneHotCategorical(TAU, logits=z).sample(seed=s))
    variants = {
        "ours_forward": lambda: ours_fwd(logits, seed),
        "tfp_forward": lambda: tfp_fwd(logits, seed),
        "ours_gradient": lambda: ours_grad(logits, seed),
        "tfp_gradient": lambda: tfp_grad(logits, seed),
    }
    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(os.cpu_count() or 1)
        tl = torch.tensor(logits.numpy(), requires_grad=True)
        tw = torch.tensor(weights.numpy())

        def torch_grad():
            tl.grad = None
            (tw * F.gumbel_softmax(tl, tau=TAU)).sum().backward()
            return tl.grad

        variants["torch_forward"] = lambda: F.gumbel_softmax(tl.detach(), tau=TAU)
        variants["torch_gradient"] = torch_grad
    except ImportError:
        pass
    return variants


def main(argv):
    del argv
    results, rows = {}, []
    for shape in SHAPES:
        r = harness.interleaved_medians(_variants(shape), rounds=_ROUNDS.value, inner=_INNER.value)
        results["x".join(map(str, shape))] = r
        for kind in ("forward", "gradient"):
            ours, theirs = r[f"ours_{kind}"]["median_ms"], r[f"tfp_{kind}"]["median_ms"]
            torch_ms = r.get(f"torch_{kind}", {}).get("median_ms")
            rows.append(
                [
                    f"[{shape[0]}, {shape[1]}]",
                    kind,
                    ours,
                    theirs,
                    ours / theirs,
                    "<= 1.0 met" if ours <= theirs else "<= 1.0 MISSED",
                    "-" if torch_ms is None else torch_ms,
                ]
            )
    headers = ["logits", "pass", "ours ms", "TFP ms", "ours/TFP", "goal", "torch ms"]
    table = harness.format_table(headers, rows)
    print(table)
    md, js = harness.write_results(
        _OUT.value,
        "sampler",
        table,
        {"tau": TAU, "rounds": _ROUNDS.value, "inner": _INNER.value, "results": results},
    )
    print(f"\nWrote {md} and {js}")


if __name__ == "__main__":
    app.run(main)
