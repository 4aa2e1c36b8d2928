"""What the supervised trainers share: flags, the task check, quiet logs, one library call."""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

import configs


def define_flags(
    default_config: str, workdir_help: str = "Where checkpoints, metrics and exports go (resumes if present)."
):
    """``--config`` (an ml_collections file, default one shipped in ``configs/``) and a required ``--workdir``."""
    config = config_flags.DEFINE_config_file(
        "config", os.path.join(os.path.dirname(configs.__file__), default_config), "ml_collections config file."
    )
    workdir = flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["workdir"])
    return config, workdir


_NEW_RUN = flags.DEFINE_bool(
    "new_run",
    False,
    "If the workdir holds a run with a different config, move it into <workdir>/previous_runs/ and start afresh.",
)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with an override of a field the config lacks reported in one line, not a traceback."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:  # ml_collections' "no such field", from --config.<field>=...
        field = str(e).strip("'\"")
        bad = [a for a in argv if a.startswith("--config.") and field in a.split("=", 1)[0]]
        given = bad[0].split("=", 1)[0] if bad else f"--config.{field}"
        print(
            f"error: {given}: the config has no field {field!r}. Check the spelling against the config file "
            "(--config=...); a new field cannot be added from the command line.",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(2)


def run(main) -> None:
    """``app.run(main)`` with :func:`parse_flags`."""
    app.run(main, flags_parser=parse_flags)


def train(task: str, config, workdir: str) -> None:
    """Checks the dataset's task, then ``train_and_evaluate(config, workdir)``."""
    from slf_tf import data
    from slf_tf.training import progress, trainer

    dataset_task = data.dataset_task(config.data.name)
    if dataset_task != task:
        raise app.UsageError(f"This trainer trains {task}; dataset {config.data.name!r} is {dataset_task}.")
    progress.setup_console_logging()
    try:
        trainer.train_and_evaluate(config, workdir, new_run=_NEW_RUN.value)
    except ValueError as e:  # a bad config, input or workdir: the message says what to do, no traceback
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
