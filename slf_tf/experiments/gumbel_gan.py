"""A GAN whose generator emits Gumbel-Softmax samples: learn a distribution over the numbers 0-4.

The data are one-hot numbers drawn from a fixed, non-uniform distribution in which
one number has probability 0. The generator maps Gaussian noise to logits and
emits relaxed one-hots ``softmax((logits + g) / tau)``, with tau annealed from
large to small (Jang et al. 2017's advice); the discriminator is an MLP on one-hot
vectors (plus, by default, the batch's mean one-hot: minibatch features, which
keep the generator from collapsing onto a few numbers). The generator's distribution is exact given the noise,
``E_z[softmax(logits(z))]``, and is compared with the truth by total variation.
"""

from __future__ import annotations

import os
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from slf_tf import gumbel, rng, schedules
from slf_tf.experiments import common


def _mlp(inputs: int, hidden: int, outputs: int, name: str) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(outputs),
        ],
        name=name,
    )


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def _build(config, target: np.ndarray):
    """The two networks, their optimizers and the traced training step; returns ``(step, distribution, tau)``."""
    n = len(target)
    keras.utils.set_random_seed(config.seed)
    gen = _mlp(config.noise_dim, config.hidden, n, "generator")
    # With minibatch features (Salimans et al. 2016) the discriminator also sees the batch's
    # mean one-hot, so it can tell a collapsed generator's frequencies from the data's.
    disc = _mlp(2 * n if config.minibatch_features else n, config.hidden, 1, "discriminator")

    def discriminate(x, training):
        if config.minibatch_features:
            x = tf.concat([x, tf.broadcast_to(tf.reduce_mean(x, 0, keepdims=True), tf.shape(x))], axis=-1)
        return disc(x, training=training)

    # Cosine decay to 10% of the learning rate damps the GAN's late oscillation.
    def lr():
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, config.steps, alpha=0.1)

    opt_g, opt_d = keras.optimizers.Adam(lr(), 0.5), keras.optimizers.Adam(lr(), 0.5)
    opt_g.build(gen.trainable_variables)
    opt_d.build(disc.trainable_variables)
    tau = schedules.ExponentialAnneal(config.tau_initial, config.tau_rate, config.tau_minimum)
    log_target = tf.math.log(tf.constant(target, tf.float32))
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    b = config.batch_size

    @tf.function
    def step(t):
        seeds = rng.split(rng.step_seed(config.seed, t), 3)
        real = gumbel.gumbel_max(tf.tile(log_target[None], [b, 1]), seed=seeds[0])
        z = tf.random.stateless_normal([b, config.noise_dim], seed=seeds[1])
        with tf.GradientTape() as tape_d, tf.GradientTape() as tape_g:
            fake = gumbel.gumbel_softmax(gen(z, training=True), tau(t), hard=config.hard, seed=seeds[2])
            d_real, d_fake = discriminate(real, True), discriminate(fake, True)
            loss_d = bce(tf.ones_like(d_real), d_real) + bce(tf.zeros_like(d_fake), d_fake)
            loss_g = bce(tf.ones_like(d_fake), d_fake)  # non-saturating generator loss
        opt_d.apply_gradients(
            zip(tape_d.gradient(loss_d, disc.trainable_variables), disc.trainable_variables, strict=True)
        )
        opt_g.apply_gradients(
            zip(tape_g.gradient(loss_g, gen.trainable_variables), gen.trainable_variables, strict=True)
        )
        return loss_d, loss_g

    eval_z = tf.random.stateless_normal([4096, config.noise_dim], seed=(config.seed, 10**6))

    def generator_distribution() -> np.ndarray:
        return tf.reduce_mean(tf.nn.softmax(gen(eval_z, training=False)), axis=0).numpy()

    return step, generator_distribution, tau


def run(config, workdir: str) -> dict[str, Any]:
    """Trains the GAN; writes the figure (distributions over training, TV curve) and JSON."""
    target = np.asarray(config.target, np.float64)
    if target.ndim != 1 or np.any(target < 0) or not np.isclose(target.sum(), 1.0):
        raise ValueError(f"target must be a probability vector; got {config.target!r}.")
    common.prepare(workdir, config)
    step, generator_distribution, tau = _build(config, target)
    history_steps, history_tv, snapshots = [], [], []
    writer = common.summary_writer(workdir)
    losses = None
    start = time.time()
    for t in range(config.steps + 1):
        if t % config.eval_every == 0 or t == config.steps:
            p = generator_distribution()
            history_steps.append(t)
            history_tv.append(total_variation(p, target))
            snapshots.append(p.tolist())
            logging.info("step %d  TV %.4f  tau %.3f  p_gen %s", t, history_tv[-1], float(tau(t)), np.round(p, 3))
            scalars = {"gan/total_variation": history_tv[-1], "gan/tau": tau(t)}
            scalars.update({f"generator/p_{i}": p_i for i, p_i in enumerate(p)})
            if losses is not None:
                scalars.update({"gan/loss_discriminator": losses[0], "gan/loss_generator": losses[1]})
            common.write_scalars(writer, t, scalars)
        if t < config.steps:
            losses = step(tf.constant(t, tf.int64))
    writer.close()
    seconds = time.time() - start
    figure = _plot(os.path.join(workdir, "gumbel_gan.png"), target, history_steps, history_tv, snapshots)
    result = {
        "target": target.tolist(),
        "final_distribution": snapshots[-1],
        "final_tv": history_tv[-1],
        "best_tv": min(history_tv),
        "initial_tv": history_tv[0],
        "steps": history_steps,
        "tv": history_tv,
        "seconds": seconds,
        "figure": figure,
    }
    common.write_json(workdir, "results.json", result)
    print(
        f"TV(generator, target): {history_tv[0]:.4f} at step 0 -> {history_tv[-1]:.4f} at step {config.steps} "
        f"({seconds:.0f} s). Target {np.round(target, 3)}; generator {np.round(snapshots[-1], 3)}. Figure: {figure}"
    )
    return result


def _plot(path, target, steps, tv, snapshots):
    plt = common.pyplot()
    picks = sorted({0, len(steps) // 4, len(steps) // 2, len(steps) - 1})
    fig, axes = plt.subplots(1, len(picks) + 1, figsize=(3.2 * (len(picks) + 1), 3))
    x = np.arange(len(target))
    for ax, i in zip(axes[:-1], picks, strict=True):
        ax.bar(x - 0.2, target, width=0.4, label="truth", color="gray")
        ax.bar(x + 0.2, snapshots[i], width=0.4, label="generator")
        ax.set_title(f"step {steps[i]}  (TV {tv[i]:.3f})", fontsize=9)
        ax.set_xticks(x)
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    axes[-1].plot(steps, tv)
    axes[-1].set_yscale("log")
    axes[-1].axhline(0.05, color="red", lw=0.8, ls="--")
    axes[-1].set_title("total variation", fontsize=9)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
