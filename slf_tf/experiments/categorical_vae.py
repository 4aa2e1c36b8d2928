"""The categorical VAE of Jang et al. (2017): 20 latent variables x 10 classes, Bernoulli decoder.

Encoder and decoder are MLPs (512-256 / 256-512); inputs are binarised afresh at
every step (dynamic binarisation); tau = max(tau_min, exp(-r t)). The prior is
uniform, the KL term analytic. Estimators of the encoder's gradient:
``gumbel_softmax`` (relaxed sample into the decoder), ``straight_through``
(one-hot forward, relaxed gradient), ``score_function`` (exact one-hot sample,
REINFORCE with a moving-average baseline) and ``ils`` (exact one-hot sample,
Intermediate Loss Sampling). Reported: test -ELBO in nats with exact one-hot
samples from q(z|x), averaged over several draws, and at the end the m-sample
importance-weighted bound on -log p(x) that the paper reports (m = 1000 there).
"""

from __future__ import annotations

import os
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from slf_tf import data as data_lib
from slf_tf import estimators, gumbel, rng, schedules
from slf_tf.experiments import common

ESTIMATORS = ("gumbel_softmax", "straight_through", "score_function", "ils")


def _mlp(sizes, name):
    layers = [keras.Input((sizes[0],))]
    layers += [keras.layers.Dense(s, activation="relu") for s in sizes[1:-1]]
    layers.append(keras.layers.Dense(sizes[-1]))
    return keras.Sequential(layers, name=name)


def _binarise(x, seed):
    return tf.cast(tf.random.stateless_uniform(tf.shape(x), seed=seed) < x, tf.float32)


class _VAE:
    def __init__(self, config, dim: int):
        self.latents, self.classes = config.latents, config.classes
        z = self.latents * self.classes
        self.encoder = _mlp((dim, *config.hidden, z), "encoder")
        self.decoder = _mlp((z, *reversed(config.hidden), dim), "decoder")
        self.variables = self.encoder.trainable_variables + self.decoder.trainable_variables

    def logits(self, x):
        return tf.reshape(self.encoder(x), [-1, self.latents, self.classes])

    def log_likelihood(self, x, z):
        """Per-example Bernoulli log p(x|z) for ``x`` ``[B, D]`` and ``z`` ``[B, latents, classes]``."""
        decoded = self.decoder(tf.reshape(z, [tf.shape(x)[0], -1]))
        return -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=decoded), axis=-1)

    def terms(self, x, z, logits):
        """Per-example log p(x|z) and analytic KL(q(z|x) || uniform)."""
        recon = self.log_likelihood(x, z)
        log_q = tf.nn.log_softmax(logits)
        kl = tf.reduce_sum(tf.exp(log_q) * (log_q + np.log(self.classes)), axis=[1, 2])
        return recon, kl


def importance_weighted_bound(vae: _VAE, x: tf.Tensor, samples: int, seed, chunk: int = 100) -> tf.Tensor:
    """Per-example ``-log (1/m sum_i p(x, z_i) / q(z_i|x))`` with exact draws ``z_i ~ q(z|x)``.

    An upper bound on ``-log p(x)`` that tightens as ``m`` grows (m = 1 is the
    -ELBO of one draw); computed in chunks of ``chunk`` samples to bound memory.
    """
    logits = vae.logits(x)  # [B, L, C]
    log_prior = -vae.latents * np.log(vae.classes)
    log_weights = []
    for start in range(0, samples, chunk):
        m = min(chunk, samples - start)
        tiled = tf.tile(logits[None], [m, 1, 1, 1])
        z = gumbel.gumbel_max(tiled, seed=rng.step_seed(seed, start))  # [m, B, L, C]
        log_q = tf.reduce_sum(estimators.categorical_log_prob(tiled, z), axis=-1)  # [m, B]
        x_tiled = tf.reshape(tf.tile(x[None], [m, 1, 1]), [-1, x.shape[-1]])
        log_px = vae.log_likelihood(x_tiled, tf.reshape(z, [-1, vae.latents, vae.classes]))
        log_weights.append(tf.reshape(log_px, tf.shape(log_q)) + log_prior - log_q)
    log_weights = tf.concat(log_weights, axis=0)
    return -(tf.reduce_logsumexp(log_weights, axis=0) - np.log(samples))


def run(config, workdir: str) -> dict[str, Any]:
    """Trains one VAE per estimator in ``config.estimators``; writes a table, a figure and JSON."""
    unknown = sorted(set(config.estimators) - set(ESTIMATORS))
    if unknown:
        raise ValueError(f"Unknown VAE estimators {unknown}; known: {list(ESTIMATORS)}.")
    if config.eval_iw_samples < 1:
        raise ValueError(f"eval_iw_samples must be >= 1; got {config.eval_iw_samples}.")
    ds = data_lib.load(config.data, data_dir=config.data_dir, seed=config.seed, standardize=False)
    x_train = ds.x_train.astype(np.float32)
    if config.data == "digits":
        x_train, x_test = x_train, ds.x_test.astype(np.float32)  # already in [0, 1]
    else:
        x_test = ds.x_test.astype(np.float32)
    common.prepare(workdir, config)
    results, bounds, curves, seconds = {}, {}, {}, {}
    for name in config.estimators:
        start = time.time()
        writer = common.summary_writer(workdir, name)
        results[name], bounds[name], curves[name] = _train_one(config, name, x_train, x_test, writer)
        writer.close()
        seconds[name] = time.time() - start
        logging.info(
            "%s: test -ELBO %.2f, IW bound %.2f nats (%.0f s)", name, results[name], bounds[name], seconds[name]
        )
    m = config.eval_iw_samples
    rows = [f"| estimator | test -ELBO (nats) | test -log p(x) bound, m={m} | minutes |", "|---|---|---|---|"]
    rows += [f"| {k} | {v:.2f} | {bounds[k]:.2f} | {seconds[k] / 60:.1f} |" for k, v in results.items()]
    table = "\n".join(rows)
    common.write_table(workdir, "categorical_vae", table)
    figure = _plot(os.path.join(workdir, "categorical_vae.png"), curves)
    common.write_json(
        workdir,
        "results.json",
        {
            "test_neg_elbo": results,
            "test_iw_bound": bounds,
            "iw_samples": m,
            "curves": curves,
            "seconds": seconds,
            "figure": figure,
            "data": config.data,
            "steps": config.steps,
        },
    )
    print(table)
    return results


def _estimator(config, name: str) -> estimators.Estimator:
    """The toolkit estimator of each VAE run, from the registry."""
    if name == "ils":  # the loss is a batch mean: loss_scale makes each draw step on its own loss
        loss_scale = config.batch_size if config.ils_per_example else 1.0
        return estimators.get("ils", step_size=config.ils_step_size, variant=config.ils_variant, loss_scale=loss_scale)
    if name == "score_function":
        return estimators.get("score_function", baseline="moving_average", decay=0.99)
    return estimators.get(name)


def _train_one(config, name: str, x_train: np.ndarray, x_test: np.ndarray, writer):
    keras.utils.set_random_seed(config.seed)
    vae = _VAE(config, x_train.shape[1])
    opt = keras.optimizers.Adam(config.learning_rate)
    opt.build(vae.variables)
    x_all = tf.constant(x_train)
    n, b = len(x_train), config.batch_size
    tau = schedules.ExponentialAnneal(1.0, config.tau_rate, config.tau_minimum)  # max(tau_min, exp(-r t))
    estimator = _estimator(config, name)

    @tf.function
    def step(t):
        seeds = rng.split(rng.step_seed(config.seed, t), 3)
        idx = tf.random.stateless_uniform([b], seed=seeds[0], maxval=n, dtype=tf.int32)
        x = _binarise(tf.gather(x_all, idx), seeds[1])
        with tf.GradientTape() as tape:
            logits = vae.logits(x)
            z = estimator.sample(logits, seed=seeds[2], temperature=tau(t))
            recon, kl = vae.terms(x, z, logits)
            cost = estimator.surrogate(-recon, logits, z)  # -recon, with the estimator's gradient
            loss = tf.reduce_mean(cost + kl)
        opt.apply_gradients(zip(tape.gradient(loss, vae.variables), vae.variables, strict=True))
        return tf.reduce_mean(kl - recon)

    @tf.function
    def test_neg_elbo(x, seed):
        logits = vae.logits(x)
        z = gumbel.gumbel_max(logits, seed=seed)
        recon, kl = vae.terms(x, z, logits)
        return tf.reduce_sum(kl - recon)

    def evaluate() -> float:
        total = 0.0
        for draw in range(config.eval_draws):
            xb = _binarise(tf.constant(x_test), tf.constant([config.seed + 7, draw]))
            total += float(test_neg_elbo(xb, tf.constant([config.seed + 11, draw])))
        return total / (config.eval_draws * len(x_test))

    curve, start = [], time.time()
    for t in range(config.steps):
        train_neg_elbo = step(tf.constant(t, tf.int64))
        if (t + 1) % config.eval_every == 0 or t + 1 == config.steps:
            curve.append((t + 1, evaluate()))
            elapsed = time.time() - start
            common.write_scalars(
                writer,
                t + 1,
                {"test/neg_elbo": curve[-1][1], "train/neg_elbo": train_neg_elbo, "train/tau": tau(t)},
            )
            rate = (t + 1) / elapsed
            logging.info("%s step %d/%d: test -ELBO %.2f, %.1f steps/s", name, t + 1, config.steps, curve[-1][1], rate)
    iw_bound = _test_bound(config, vae, x_test)
    common.write_scalars(writer, config.steps, {"test/iw_bound": iw_bound})
    return curve[-1][1], iw_bound, curve


def _test_bound(config, vae: _VAE, x_test: np.ndarray) -> float:
    """The m-sample importance-weighted bound on -log p(x), averaged over the test set."""
    seed = tf.constant([config.seed + 13, 0])
    bound = tf.function(lambda x: tf.reduce_sum(importance_weighted_bound(vae, x, config.eval_iw_samples, seed)))
    x_binary = _binarise(tf.constant(x_test), tf.constant([config.seed + 7, 0]))
    return sum(float(bound(x_binary[i : i + 100])) for i in range(0, len(x_test), 100)) / len(x_test)


def _plot(path, curves):
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, curve in curves.items():
        steps, values = zip(*curve, strict=True)
        ax.plot(steps, values, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("test -ELBO (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
