r"""When is the damage done, and when does the decision network commit? (docs/design.md, "Committing in time")

For each setting, one seed (a development seed, not a reported one):
- fixed cross-entropy: the step of its best clean-validation accuracy. On noisy
  labels it falls after that step, as the network fits the noise: the damage;
- SLF: the step from which the candidate it ends on (largest P(selected) x
  weight) stays its top candidate to the end: when it commits. Once with the
  defaults and once with a variant (default: the plain SGD virtual step and no
  restart, the defaults before the restart mode).

    python -m benchmarks.commitment --settings digits_sym40,breast_cancer_sym30
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from absl import app, flags

from benchmarks.curves import commit_step, damage_step
from benchmarks.quality_settings import SETTINGS, apply, parse_variants

_SETTINGS = flags.DEFINE_list("settings", None, "Settings (default: all available).")
_SEED = flags.DEFINE_integer("seed", 10, "The seed (a development seed: the reported ones are 0-4).")
_VARIANT = flags.DEFINE_string(
    "variant", "decision.restart_fraction=0,decision.virtual_step=sgd", "Overrides of the SLF variant compared."
)
_MNIST_DIR = flags.DEFINE_string("mnist_dir", "", "Directory with the MNIST IDX files (enables the MNIST settings).")
_POINTS = 50  # log and evaluation points per run


def _curves(setting: str, overrides: dict[str, Any]) -> list[dict]:
    """The metrics.jsonl rows of one run logged and evaluated at ``_POINTS`` steps."""
    from slf_tf.training import Trainer

    config = apply(SETTINGS[setting][0](_MNIST_DIR.value), overrides)
    config.seed = _SEED.value
    config.eval_every_steps = config.log_every_steps = max(1, config.num_train_steps // _POINTS)
    config.checkpoint_every_steps = config.num_train_steps
    config.best_metric, config.early_stopping_patience, config.export = "auto", 0, False
    with tempfile.TemporaryDirectory(prefix="slf_commit_") as workdir:
        results = Trainer(config, workdir).run()
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    return rows + [{"results": results, "steps": config.num_train_steps}]


def main(argv):
    del argv
    chosen = _SETTINGS.value or [
        s for s, (_, _, mnist) in SETTINGS.items() if (_MNIST_DIR.value or not mnist) and s != "diabetes_out10"
    ]
    variant = parse_variants(f"variant:{_VARIANT.value}")["variant"]
    lines = [
        "| setting | steps | CE's best val (damage after) | CE val: best -> last | SLF commits to (defaults) "
        "| SLF test (defaults) | SLF commits to (variant) | SLF test (variant) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting in chosen:
        ce = _curves(setting, {"loss.strategy": "fixed", "loss.fixed": "cross_entropy"})
        slf = _curves(setting, {"loss.strategy": "slf"})
        old = _curves(setting, {"loss.strategy": "slf", **variant})
        step, best, last = damage_step(ce)
        (top, since), (old_top, old_since) = commit_step(slf), commit_step(old)
        restarted = slf[-1]["results"].get("restarted_at", -1)
        lines.append(
            f"| {setting} | {ce[-1]['steps']} | {step} | {100 * best:.1f} -> {100 * last:.1f} "
            f"| {top} at {since}{f' (restart at {restarted})' if restarted >= 0 else ''} "
            f"| {100 * slf[-1]['results']['best']['test']['accuracy']:.1f} | {old_top} at {old_since} "
            f"| {100 * old[-1]['results']['best']['test']['accuracy']:.1f} |"
        )
        print(lines[-1], flush=True)
    print(f"\nseed {_SEED.value}; variant: {_VARIANT.value}\n" + "\n".join(lines))


if __name__ == "__main__":
    app.run(main)
