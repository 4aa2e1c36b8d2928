"""The K sweep: SLF with K in {1, 2, 3, 5, 10, inf} on clean and noisy data, several seeds.

Source claim: "the best K differs by dataset; softmax is K = inf". Each (setting,
K, seed) is one trainer run with identical splits, noise and budget per seed, in
its own ``workdir/runs/<setting>/K<k>_seed<s>`` (TensorBoard: what the decision
network chose; rerunning with the same workdir resumes an interrupted sweep).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from absl import logging

from configs import digits as digits_config
from slf_tf.experiments import common
from slf_tf.training import Trainer


def _settings(config) -> dict[str, Any]:
    out = {}
    for name in config.settings:
        c = digits_config.get_config()
        c.num_train_steps = config.num_train_steps
        if name == "digits_clean":
            pass
        elif name == "digits_sym40":
            c.data.label_noise = 0.4
        elif name == "mnist10k_sym40":
            if not config.mnist_dir:
                logging.warning("Skipping mnist10k_sym40: no mnist_dir given.")
                continue
            c.data.name, c.data.data_dir, c.data.val_fraction = "mnist", config.mnist_dir, 0.01
            c.data.max_train_examples, c.data.label_noise = 10_000, 0.4
            c.batch_size, c.model.hidden_units, c.decision.every = 128, (256, 128), 2
        else:
            raise ValueError(f"Unknown setting {name!r}; known: ['digits_clean', 'digits_sym40', 'mnist10k_sym40'].")
        out[name] = c
    return out


def run(config, workdir: str) -> dict[str, Any]:
    """Runs the sweep; writes k_sweep.md (table), k_sweep.png (accuracy vs K) and results.json."""
    common.prepare(workdir, config)
    ks = [k if k == "inf" else int(k) for k in config.ks]
    results: dict[str, dict[str, list[float]]] = {}
    start = time.time()
    for name, base in _settings(config).items():
        results[name] = {str(k): [] for k in ks}
        for seed in range(config.seeds):
            for k in ks:
                c = base.copy_and_resolve_references()
                c.seed, c.export = seed, False
                if k == "inf":  # config.loss.k is an int field; K = inf is the softmax strategy
                    c.loss.strategy = "softmax"
                else:
                    c.loss.k = k
                c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = c.num_train_steps
                run_dir = os.path.join(workdir, "runs", name, f"K{k}_seed{seed}")
                acc = 100.0 * Trainer(c, run_dir).run()["test"]["accuracy"]
                results[name][str(k)].append(acc)
                print(f"[{time.time() - start:5.0f}s] {name} seed {seed} K={k}: {acc:.2f}", flush=True)
    rows = ["| setting | " + " | ".join(f"K={k}" for k in ks) + " | best K |", "|---" * (len(ks) + 2) + "|"]
    for name, by_k in results.items():
        means = {k: np.mean(v) for k, v in by_k.items()}
        cells = [
            f"{means[str(k)]:.2f} +- {np.std(by_k[str(k)], ddof=1) if len(by_k[str(k)]) > 1 else 0:.2f}" for k in ks
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {max(means, key=means.get)} |")
    table = "\n".join(rows)
    common.write_table(workdir, "k_sweep", table)
    figure = _plot(os.path.join(workdir, "k_sweep.png"), ks, results)
    payload = {
        "results": results,
        "ks": [str(k) for k in ks],
        "seeds": config.seeds,
        "minutes": (time.time() - start) / 60,
    }
    common.write_json(workdir, "results.json", {**payload, "figure": figure})
    print(table)
    return payload


def _plot(path, ks, results):
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    x = np.arange(len(ks))
    for name, by_k in results.items():
        means = [np.mean(by_k[str(k)]) for k in ks]
        stds = [np.std(by_k[str(k)]) for k in ks]
        ax.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=name)
    ax.set_xticks(x, labels=[str(k) for k in ks])
    ax.set_xlabel("K (Gumbel-Softmax draws; inf = softmax weighting)")
    ax.set_ylabel("test accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
