r"""Why SLF trails the robust loss under pair-flip noise (docs/design.md, "Asymmetric noise").

For a setting and development seeds (not the reported 0-4), it trains every
fixed candidate (the sweep) and SLF variants with 50 log/evaluation points, and
reports per seed:
- the sweep's pick and each candidate's best-checkpoint test accuracy;
- per SLF variant: the candidate it ends on, the step from which it stays on
  top, its mean expected coefficients in the first 40% and in the rest, and the
  lookahead's scores -dJ/dc per candidate (mean, and the share of log points at
  which the sweep's pick scores above cross-entropy): does the hypergradient see
  the robust loss at all, and how noisy is that signal on one validation batch;
- the best-checkpoint test accuracy of each variant.

    python -m benchmarks.pair_noise --settings digits_pair40 --seeds 10,11,12 \
        --variants "val256:decision.val_batch_size=256;joint:loss.strategy=joint"
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.curves import commit_step  # noqa: E402
from benchmarks.quality_settings import SETTINGS, apply, parse_variants, sweep_losses  # noqa: E402
from slf_tf.stochastic_loss import candidate_tag  # noqa: E402

_SETTINGS = flags.DEFINE_list("settings", ["digits_pair40"], "Settings to diagnose.")
_SEEDS = flags.DEFINE_list("seeds", ["10", "11", "12"], "Development seeds.")
_VARIANTS = flags.DEFINE_string("variants", "", "SLF variants besides the defaults: 'name:key=value,...;...'.")
_MNIST_DIR = flags.DEFINE_string("mnist_dir", "", "Directory with the MNIST IDX files (for the MNIST settings).")
_OUT = flags.DEFINE_string("out", "benchmarks/results", "Where pair_noise.md / .json go.")
_POINTS = 50


def _run(setting: str, overrides: dict[str, Any], seed: int) -> tuple[list[dict], dict]:
    from slf_tf.training import Trainer

    config = apply(SETTINGS[setting][0](_MNIST_DIR.value), overrides)
    config.seed = seed
    config.eval_every_steps = config.log_every_steps = max(1, config.num_train_steps // _POINTS)
    config.checkpoint_every_steps = config.num_train_steps
    config.best_metric, config.early_stopping_patience, config.export = "auto", 0, False
    with tempfile.TemporaryDirectory(prefix="slf_pair_") as workdir:
        results = Trainer(config, workdir).run()
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    return rows, results


def _candidate_series(rows: list[dict], quantity: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(candidate names, steps, values [points, N]) of ``slf/<quantity>/<candidate>`` over the log points."""
    logged = [r for r in rows if any(k.startswith(f"slf/{quantity}/") for k in r)]
    names = [k.split("/", 2)[2] for k in logged[0] if k.startswith(f"slf/{quantity}/")]
    values = np.array([[r[f"slf/{quantity}/{n}"] for n in names] for r in logged])
    return names, np.array([r["step"] for r in logged]), values


def diagnose(rows: list[dict], steps: int, pick: str) -> dict[str, Any]:
    """What one SLF run chose and what its lookahead saw (see the module docstring); ``pick``: a tag."""
    names, at, p = _candidate_series(rows, "selection_probability")
    _, _, w = _candidate_series(rows, "weight")
    early = at <= 0.4 * steps
    coefficient = p * w
    out = {
        "ends_on": commit_step(rows),
        "coefficient_early": dict(zip(names, coefficient[early].mean(0).round(3).tolist(), strict=True)),
        "coefficient_late": dict(zip(names, coefficient[~early].mean(0).round(3).tolist(), strict=True)),
    }
    if any(k.startswith("slf/score/") for r in rows for k in r):
        _, _, scores = _candidate_series(rows, "score")
        out["score_mean"] = dict(zip(names, scores.mean(0).tolist(), strict=True))
        if pick in names and pick != "cross_entropy":
            above = scores[:, names.index(pick)] > scores[:, names.index("cross_entropy")]
            out["pick_scores_above_ce"] = float(above.mean())
    return out


def _pair(coefficients: dict[str, float], pick: str) -> str:
    return f"{coefficients.get('cross_entropy', 0):.2f} / {coefficients.get(pick, 0):.2f}"


def main(argv):
    del argv
    variants = {"slf": {"loss.strategy": "slf"}, **parse_variants(_VARIANTS.value)}
    report, lines = {}, []
    for setting in _SETTINGS.value:
        candidates = sweep_losses(SETTINGS[setting][0](_MNIST_DIR.value))
        for seed in map(int, _SEEDS.value):
            fixed = {}
            for name in candidates:
                rows, results = _run(setting, {"loss.strategy": "fixed", "loss.fixed": name}, seed)
                fixed[name] = results["best"]
            pick = candidate_tag(max(fixed, key=lambda k: fixed[k]["val"]["accuracy"]))
            entry = {
                "fixed_test": {candidate_tag(k): round(100 * v["test"]["accuracy"], 2) for k, v in fixed.items()},
                "pick": pick,
            }
            for vname, overrides in variants.items():
                rows, results = _run(setting, overrides, seed)
                entry[vname] = {
                    "test": round(100 * results["best"]["test"]["accuracy"], 2),
                    **diagnose(rows, SETTINGS[setting][0](_MNIST_DIR.value).num_train_steps, pick),
                }
            report[f"{setting}/seed{seed}"] = entry
            sweep = entry["fixed_test"][pick]
            for vname in variants:
                v = entry[vname]
                lines.append(
                    [
                        setting,
                        seed,
                        f"{pick} {sweep:.1f}",
                        vname,
                        f"{v['test']:.1f} ({v['test'] - sweep:+.1f})",
                        f"{v['ends_on'][0]} at {v['ends_on'][1]}",
                        _pair(v["coefficient_early"], pick),
                        _pair(v["coefficient_late"], pick),
                        f"{v.get('pick_scores_above_ce', float('nan')):.2f}",
                    ]
                )
                print(" | ".join(map(str, lines[-1])), flush=True)
    headers = [
        "setting",
        "seed",
        "sweep's pick (test)",
        "variant",
        "test (vs sweep)",
        "ends on",
        "c early: CE / pick",
        "c late: CE / pick",
        "pick's score > CE's (share of logs)",
    ]
    table = harness.format_table(headers, lines)
    print(table)
    md, js = harness.write_results(_OUT.value, "pair_noise", table, {"runs": report})
    print(f"\nWrote {md} and {js}")


if __name__ == "__main__":
    app.run(main)
