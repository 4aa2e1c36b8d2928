"""ILS toy example 1: python -m trainers.ils_toy --config configs/ils_toy.py --workdir runs/ils_toy"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from trainers import common  # noqa: E402

_CONFIG, _WORKDIR = common.define_flags("ils_toy.py", "Where the figure, table and JSON go.")


def main(argv):
    del argv
    from slf_tf.experiments import ils_toy

    ils_toy.run(_CONFIG.value, _WORKDIR.value)


def run() -> None:
    common.run(main)


if __name__ == "__main__":
    run()
