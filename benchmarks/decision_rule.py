r"""SLF's decision rule alone, fed synthetic scores: which candidate does it end on, and why?

The decision network learns from the lookahead's scores ``-dJ/dc`` (docs/design.md). This
probe replaces the network and the lookahead by scores drawn per step, so that what the rule
does with a given score process can be told apart from what the process is. Per candidate:
a mean and a spread (independent Gaussian draws), and optionally another mean for the steps
on which the candidate is in this step's mix (``c_i > 0``), the "marginal value falls once the
step follows it" the box head's logs show (docs/experiments.md, §6). Everything else is the
library's: ``StochasticLoss.decision_loss`` with the trainer's defaults (K = 3, the
exponential anneal 2 -> 0.5, Adam at 0.02).

    python -m benchmarks.decision_rule --means 0.015,0.004,0.10 --spreads 0.02,0.005,0.3
    python -m benchmarks.decision_rule --means 0.015,0.004,0.19 --when_selected 0.015,0.004,0.06

Prints, per seed, the final P(selected), the weights and the mean coefficients over the last
200 steps, and how many seeds end on each candidate (the largest mean coefficient).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Sequence  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import slf_tf  # noqa: E402
from benchmarks import harness  # noqa: E402
from slf_tf import rng, schedules  # noqa: E402
from slf_tf.hypergrad import Lookahead  # noqa: E402


def _define_flags() -> None:
    """The command line's flags, defined only when run as a script (other benchmarks define ``--seeds`` too,
    and the tests import several of them into one process)."""
    flags.DEFINE_list("means", ["0.015", "0.004", "0.10"], "Each candidate's mean score -dJ/dc.")
    flags.DEFINE_list("spreads", ["0", "0", "0"], "Each candidate's score standard deviation.")
    flags.DEFINE_list("when_selected", [], "Each candidate's mean score on steps it is in the mix.")
    flags.DEFINE_integer("seeds", 8, "Seeds (each draws its own scores and selections).")
    flags.DEFINE_integer("steps", 1200, "Decision updates per seed.")
    flags.DEFINE_string("out", "benchmarks/results", "Where decision_rule.md / .json go.")


_TAIL = 200  # the steps the mean coefficients are taken over


def simulate(
    means: Sequence[float],
    spreads: Sequence[float],
    when_selected: Sequence[float] | None = None,
    *,
    seed: int = 0,
    steps: int = 1200,
) -> dict[str, list[float]]:
    """One run of the rule on synthetic scores; returns the final P(selected), weights and tail mean of ``c``."""
    n = len(means)
    loss = slf_tf.StochasticLoss(
        slf_tf.losses.known("classification")[:n],  # the names do not matter: only the rule runs
        k=3,
        temperature=schedules.ExponentialAnneal(2.0, 2e-3, 0.5),
        seed=seed,
    )
    optimizer = keras.optimizers.Adam(0.02)
    optimizer.build(loss.decision_variables)
    noise = np.random.default_rng(seed).normal(size=(steps, n)).astype(np.float32) * np.float32(spreads)
    out_mean = tf.constant(means, tf.float32)
    in_mean = tf.constant(when_selected if when_selected else means, tf.float32)

    @tf.function
    def update(step, noise_t):
        with tf.GradientTape() as tape:
            choice = loss.sample(rng.step_seed(loss.seed, step))
            selected = tf.stop_gradient(choice.coefficients) > 0
            scores = tf.where(selected, in_mean, out_mean) + noise_t
            look = Lookahead(None, [], tf.zeros([n]), -scores, tf.zeros([]), tf.zeros([]))
            objective = loss.decision_loss(choice, look)
        grads = tape.gradient(objective, loss.decision_variables)
        optimizer.apply_gradients(zip(grads, loss.decision_variables, strict=True))
        loss.step.assign_add(1)
        return choice.coefficients

    tail = np.zeros(n)
    for t in range(steps):
        c = update(tf.constant(t, tf.int64), tf.constant(noise[t]))
        if t >= steps - _TAIL:
            tail += c.numpy() / _TAIL
    return {
        "selection_probability": loss.selection_probabilities().numpy().tolist(),
        "weight": loss.current_weights().numpy().tolist(),
        "mean_coefficient": tail.tolist(),
    }


def main(argv):
    del argv
    f = flags.FLAGS
    means, spreads = [float(v) for v in f.means], [float(v) for v in f.spreads]
    when_selected = [float(v) for v in f.when_selected] or None
    if len(spreads) != len(means) or (when_selected and len(when_selected) != len(means)):
        raise app.UsageError("--means, --spreads and --when_selected need one value per candidate.")
    runs = [simulate(means, spreads, when_selected, seed=s, steps=f.steps) for s in range(f.seeds)]
    rows = [
        [s, *(np.round(r[k], 2).tolist() for k in ("selection_probability", "weight", "mean_coefficient"))]
        for s, r in enumerate(runs)
    ]
    ends = [int(np.argmax(r["mean_coefficient"])) for r in runs]
    counts = {f"candidate {i}": ends.count(i) for i in range(len(means))}
    table = harness.format_table(["seed", "P(selected)", "weight", f"mean c, last {_TAIL} steps"], rows)
    text = f"means {means}, spreads {spreads}, when selected {when_selected}\n\n{table}\n\nends on: {counts}"
    print(text)
    payload = {"means": means, "spreads": spreads, "when_selected": when_selected, "runs": runs, "ends": ends}
    harness.write_results(f.out, "decision_rule", text, payload)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
