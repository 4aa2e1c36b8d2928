"""Localisation with noisy labels and boxes.

python -m trainers.localisation --config configs/localisation.py --workdir runs/localisation
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from trainers import common  # noqa: E402

_CONFIG, _WORKDIR = common.define_flags("localisation.py", "Where the figure, table and JSON go.")


def main(argv):
    del argv
    from slf_tf.experiments import localisation

    localisation.run(_CONFIG.value, _WORKDIR.value)


def run() -> None:
    common.run(main)


if __name__ == "__main__":
    run()
