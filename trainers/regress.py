"""Trains a regressor with a combined loss (SLF by default).

    python -m trainers.regress --config configs/diabetes_outliers.py --workdir runs/diabetes \\
        [--config.loss.strategy=fixed --config.loss.fixed=mse]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from trainers import common  # noqa: E402

_CONFIG, _WORKDIR = common.define_flags("diabetes_outliers.py")


def main(argv):
    del argv
    common.train("regression", _CONFIG.value, _WORKDIR.value)


def run() -> None:
    """Console entry point (`slf-regress`)."""
    common.run(main)


if __name__ == "__main__":
    run()
