"""Trains a regressor with a combined loss (SLF by default).

    python -m trainers.regress --config configs/diabetes_outliers.py --workdir runs/diabetes \
        [--config.loss.strategy=fixed --config.loss.fixed=mse]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import configs  # noqa: E402  (the default config ships inside the package)

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(configs.__file__), "diabetes_outliers.py"), "ml_collections config file."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and exports go (resumes if present).")
flags.mark_flags_as_required(["workdir"])

TASK = "regression"


def main(argv):
    del argv
    from slf_tf import data
    from slf_tf.training import trainer

    trainer.quiet_library_logs()

    config = _CONFIG.value
    task = data.EMBEDDED.get(config.data.name, "classification")
    if task != TASK:
        raise app.UsageError(f"trainers.classify trains {TASK}; dataset {config.data.name!r} is {task}.")
    trainer.train_and_evaluate(config, _WORKDIR.value)


def run() -> None:
    """Console entry point (``slf-regress``)."""
    app.run(main)


if __name__ == "__main__":
    run()
