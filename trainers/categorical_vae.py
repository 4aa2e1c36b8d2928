"""Categorical VAE: python -m trainers.categorical_vae --config configs/categorical_vae.py --workdir runs/vae"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from trainers import common  # noqa: E402

_CONFIG, _WORKDIR = common.define_flags("categorical_vae.py", "Where the figure, table and JSON go.")


def main(argv):
    del argv
    from slf_tf.experiments import categorical_vae

    categorical_vae.run(_CONFIG.value, _WORKDIR.value)


def run() -> None:
    common.run(main)


if __name__ == "__main__":
    run()
