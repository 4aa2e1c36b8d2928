"""Gumbel-Softmax GAN: python -m trainers.gumbel_gan --config configs/gumbel_gan.py --workdir runs/gumbel_gan"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from trainers import common  # noqa: E402

_CONFIG, _WORKDIR = common.define_flags("gumbel_gan.py", "Where the figure and JSON go.")


def main(argv):
    del argv
    from slf_tf.experiments import gumbel_gan

    gumbel_gan.run(_CONFIG.value, _WORKDIR.value)


def run() -> None:
    common.run(main)


if __name__ == "__main__":
    run()
