"""Trains a model with several outputs, a combined loss per output (SLF by default).

    python -m trainers.multi_output --config configs/digits_boxes.py --workdir runs/digits_boxes \\
        [--config.loss.strategy=fixed] [--config.heads.box.fixed=giou]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from trainers import common  # noqa: E402

_CONFIG, _WORKDIR = common.define_flags("digits_boxes.py")


def main(argv):
    del argv
    common.train("multi_output", _CONFIG.value, _WORKDIR.value)


def run() -> None:
    """Console entry point (`slf-multi-output`)."""
    common.run(main)


if __name__ == "__main__":
    run()
