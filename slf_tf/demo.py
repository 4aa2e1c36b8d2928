"""A short, visual demonstration of the Gumbel-Softmax temperature limits."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from slf_tf import gumbel

DEMO_LOGITS = (2.0, 1.0, 0.5, -0.5, -1.0)
DEMO_TEMPERATURES = (0.1, 1.0, 10.0)


def gumbel_softmax_demo(workdir: str, seed: int = 0, num_samples: int = 4) -> str:
    """Prints samples at each demo temperature beside softmax(logits); saves a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logits = tf.constant(DEMO_LOGITS)
    probs = tf.nn.softmax(logits).numpy()
    np.set_printoptions(precision=3, suppress=True)
    print(f"logits          {np.array(DEMO_LOGITS)}")
    print(f"softmax(logits) {probs}")
    fig, axes = plt.subplots(1, len(DEMO_TEMPERATURES) + 1, figsize=(4 * (len(DEMO_TEMPERATURES) + 1), 3))
    axes[0].bar(range(len(probs)), probs, color="gray")
    axes[0].set_title("softmax(logits)")
    for ax, tau in zip(axes[1:], DEMO_TEMPERATURES, strict=True):
        tiled = tf.tile(logits[None], [num_samples, 1])
        samples = gumbel.gumbel_softmax(tiled, tau, seed=(seed, int(tau * 1000))).numpy()
        for i, y in enumerate(samples):
            print(f"tau={tau:<5g} draw {i}  {y}")
            ax.bar(np.arange(len(y)) + (i - num_samples / 2) * 0.2, y, width=0.2)
        ax.set_title(f"{num_samples} Gumbel-Softmax draws, tau={tau:g}")
        ax.set_ylim(0, 1)
    for ax in axes:
        ax.set_xlabel("category")
    fig.tight_layout()
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "gumbel_softmax.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print("tau -> 0: one-hot draws; tau -> inf: uniform.  Figure:", path)
    return path
