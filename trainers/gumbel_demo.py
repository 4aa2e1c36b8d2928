"""Toolkit demo: Gumbel-Softmax samples at tau in {0.1, 1, 10} next to softmax(logits).

Run: make demo   (or: python -m trainers.gumbel_demo --workdir runs/gumbel_demo)
Writes ``gumbel_softmax.png`` to the workdir; takes a few seconds on a CPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from slf_tf import demo  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/gumbel_demo", "Where the PNG is written.")
_SEED = flags.DEFINE_integer("seed", 0, "Stateless seed of the draws.")


def main(argv):
    del argv
    path = demo.gumbel_softmax_demo(_WORKDIR.value, seed=_SEED.value)
    logging.info("Saved %s", path)


def run() -> None:
    """Console entry point (``slf-gumbel-demo``)."""
    app.run(main)


if __name__ == "__main__":
    run()
