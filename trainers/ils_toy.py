"""ILS toy example 1: python -m trainers.ils_toy --config configs/ils_toy.py --workdir runs/ils_toy"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import configs  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(os.path.dirname(configs.__file__), "ils_toy.py"))
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the figure, table and JSON go.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    from slf_tf.experiments import ils_toy

    ils_toy.run(_CONFIG.value, _WORKDIR.value)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
