"""Trains a classifier with a combined loss (SLF by default).

    python -m trainers.classify --config configs/digits.py --workdir runs/digits \\
        [--config.loss.strategy=uniform] [--config.loss.k=5]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from trainers import common  # noqa: E402

_CONFIG, _WORKDIR = common.define_flags("digits.py")


def main(argv):
    del argv
    common.train("classification", _CONFIG.value, _WORKDIR.value)


def run() -> None:
    """Console entry point (`slf-classify`)."""
    common.run(main)


if __name__ == "__main__":
    run()
