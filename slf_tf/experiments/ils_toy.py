"""ILS toy example 1: learn N random categorical distributions from single draws.

Minimise ``E[KL(pi_true || d)]`` over draws ``d`` of ``Categorical(softmax(logits))``
by SGD on the logits, with only the draws' gradient to go on. The cost is the
reference code's: ``mean(-pi_true * (log(d + 1e-8) - log(pi_true + 1e-8)))``.
Compared: Gumbel-Softmax at several temperatures, Intermediate Loss Sampling at
several step sizes (the corrected rule and the public code's ``reference`` rule),
straight-through Gumbel-Softmax and the score function with a moving-average
baseline. Every setting starts from the same logits and targets, and all run in
one ``tf.function`` loop; the true ``KL(pi_true || softmax(logits))`` is recorded.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from slf_tf import estimators, rng
from slf_tf.experiments import common


def settings(config) -> list[tuple[str, estimators.Estimator]]:
    """(label, estimator) for every compared setting."""
    out = [(f"gumbel_softmax tau={t:g}", estimators.GumbelSoftmaxEstimator(t)) for t in config.gumbel_temperatures]
    for variant in config.ils_variants:
        out += [(f"ils[{variant}] c={c:g}", estimators.IntermediateLossEstimator(c, variant)) for c in config.ils_steps]
    out.append(
        (f"straight_through tau={config.st_temperature:g}", estimators.StraightThroughEstimator(config.st_temperature))
    )
    out.append(("score_function (moving-average baseline)", estimators.ScoreFunctionEstimator("moving_average")))
    return out


def true_kl(true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean over the N distributions of ``KL(true || softmax(logits))``."""
    return tf.reduce_mean(tf.reduce_sum(true * (tf.math.log(true) - tf.nn.log_softmax(logits)), axis=-1))


def run(config, workdir: str) -> dict[str, Any]:
    """Runs every setting for ``config.steps`` SGD steps; writes the figure, a table and JSON."""
    if config.steps < 1 or config.record_every < 1:
        raise ValueError(f"steps and record_every must be >= 1; got {config.steps}, {config.record_every}.")
    common.prepare(workdir, config)
    r = np.random.default_rng(config.seed)
    true_np = r.uniform(size=(config.num_distributions, config.dim))
    true = tf.constant(true_np / true_np.sum(-1, keepdims=True), tf.float32)
    init = r.uniform(size=(config.num_distributions, config.dim)).astype(np.float32)
    runs = settings(config)
    logits = [tf.Variable(init, name=f"logits_{i}") for i in range(len(runs))]
    records = config.steps // config.record_every
    lr = config.learning_rate

    @tf.function
    def train():
        history = tf.TensorArray(tf.float32, size=records)
        for step in tf.range(config.steps):
            for i, (_, est) in enumerate(runs):
                with tf.GradientTape() as tape:
                    d = est.sample(logits[i], seed=rng.step_seed(config.seed, step, stream=i))
                    cost = tf.reduce_mean(-true * (tf.math.log(d + 1e-8) - tf.math.log(true + 1e-8)), axis=-1)
                    loss = tf.reduce_mean(est.surrogate(cost, logits[i], d))
                logits[i].assign_sub(lr * tape.gradient(loss, logits[i]))
            if (step + 1) % config.record_every == 0:
                history = history.write(
                    (step + 1) // config.record_every - 1, tf.stack([true_kl(true, z) for z in logits])
                )
        return history.stack()

    start = time.time()
    kl0 = [float(true_kl(true, z)) for z in logits]
    history = train().numpy()  # [records, settings]
    seconds = time.time() - start
    steps = [(i + 1) * config.record_every for i in range(records)]
    labels = [label for label, _ in runs]
    final = {label: float(history[-1, i]) for i, label in enumerate(labels)}  # NaN where a setting diverged
    logging.info("ILS toy: %d settings x %d steps in %.1f s.", len(runs), config.steps, seconds)
    figure = _plot(os.path.join(workdir, "ils_toy.png"), steps, history, labels)
    rows = ["| setting | initial true KL | final true KL |", "|---|---|---|"]
    rows += [
        f"| {label} | {kl0[i]:.4f} | {final[label]:.4f} |"
        if np.isfinite(final[label])
        else f"| {label} | {kl0[i]:.4f} | diverged (non-finite logits) |"
        for i, label in enumerate(labels)
    ]
    table = "\n".join(rows)
    common.write_table(workdir, "ils_toy", table)
    _write_curves(workdir, steps, history, labels)
    result = {
        "initial_kl": dict(zip(labels, kl0, strict=True)),
        "final_kl": final,
        "steps": steps,
        "history": history.tolist(),
        "seconds": seconds,
        "figure": figure,
    }
    common.write_json(workdir, "results.json", result)
    print(table)
    return result


def _write_curves(workdir: str, steps: list[int], history: np.ndarray, labels: list[str]) -> None:
    """One TensorBoard run per setting, so that the curves overlay."""
    for i, label in enumerate(labels):
        writer = common.summary_writer(workdir, re.sub(r"[^\w.=-]+", "_", label))
        for j, step in enumerate(steps):
            if np.isfinite(history[j, i]):
                common.write_scalars(writer, step, {"true_kl": history[j, i]})
        writer.close()


def _plot(path, steps, history, labels):
    plt = common.pyplot()
    cols = 4
    rows = (len(labels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), sharey=True, squeeze=False)
    for i, label in enumerate(labels):
        ax = axes[i // cols][i % cols]
        ax.plot(steps, np.maximum(history[:, i], 1e-6))
        if not np.all(np.isfinite(history[:, i])):
            ax.text(0.5, 0.5, "diverged (non-finite)", transform=ax.transAxes, ha="center", color="red")
        ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for j in range(len(labels), rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].set_ylabel("true KL")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
