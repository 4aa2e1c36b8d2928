"""Quality under the fair protocol: every strategy at its best-validation checkpoint, next to the sweep.

Run:  python -m benchmarks.quality --seeds 5 [--mnist_dir ../shared/data/mnist] [--workers 2]
      (make bench-full; `make bench` runs a small subset)
Every strategy sees the same data, splits, noise, budget and clean validation
split, and may use it the way SLF does: each run is evaluated on the clean
split 15 times and reported at its best-validation checkpoint (next to its last
step). The comparator a careful user has is the **sweep**: train every fixed
loss of the bag and keep the one with the best validation score (its cost is
the sum of those runs). The **oracle** is the fixed loss with the best mean test
score, which no user can know. Results go to ``<out>/<name>.jsonl`` one run per
line as they finish (a rerun skips what is there), then to a table (Markdown)
and JSON. Paired differences are per seed with 95% t-intervals; medians of
seconds. Goals (not assertions): SLF >= sweep - 1 point on every classification
setting, at <= 1/3 of its compute; SLF >= CE + 5 points at 40% symmetric noise
and within noise of CE on clean data; SLF above the oracle on at least half of
the noisy settings; on regression, SLF's MAE no worse than the sweep's.
Variants of SLF: ``--variants "slf_opt:decision.virtual_step=optimizer"`` (several
separated by ``;``), each a strategy with those config overrides.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import multiprocessing  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.quality_settings import (  # noqa: E402
    PEERS_ONLY,
    SETTINGS,
    available,
    base_row,
    parse_variants,
    run_job,
    strategies,
)

_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds per setting (first_seed .. first_seed + n - 1).")
_FIRST_SEED = flags.DEFINE_integer("first_seed", 0, "The first seed (use other seeds to develop than to report).")
_SETTINGS = flags.DEFINE_list("settings", None, "Settings to run (default: all available).")
_STRATEGIES = flags.DEFINE_list("strategies", None, "Strategies to run (default: all; 'fixed' = every fixed loss).")
_VARIANTS = flags.DEFINE_string("variants", "", "Extra SLF variants: 'name:key=value,key=value;name2:...'.")
_MNIST_DIR = flags.DEFINE_string("mnist_dir", "", "Directory with the MNIST IDX files (enables the MNIST settings).")
_WORKERS = flags.DEFINE_integer("workers", 1, "Parallel worker processes (each single-threaded when > 1).")
_OUT = flags.DEFINE_string("out", "benchmarks/results", "Where <name>.jsonl / .md / .json go.")
_NAME = flags.DEFINE_string("name", "quality", "Output file stem.")
_RENDER = flags.DEFINE_bool("render", False, "Only rebuild the table and goals from <out>/<name>.jsonl.")


def _init_worker(workers: int) -> None:
    import tensorflow as tf

    if workers > 1:  # two single-threaded processes beat one two-threaded one on these small models
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from absl import logging

    from slf_tf.training import progress

    progress.setup_console_logging()
    logging.set_verbosity(logging.WARNING)
    # Absorb one-time costs (imports, first traces of library code) before any timed run.
    run_job("digits_clean", {"num_train_steps": 20, "loss.strategy": "slf"}, seed=0)


def _job(args):
    """One run; a failure comes back as an error row (logged, not recorded: a rerun retries it)."""
    setting, name, overrides, seed, mnist_dir = args
    row = {"setting": setting, "strategy": name, "seed": seed}
    try:
        return {**row, **run_job(setting, overrides, seed, mnist_dir)}
    except Exception:  # noqa: BLE001 (reported in the parent, which carries on with the other runs)
        import traceback

        return {**row, "error": traceback.format_exc()}


def _jobs(done: set) -> list[tuple]:
    here = available(_MNIST_DIR.value)
    chosen = _SETTINGS.value or list(here)
    unknown = sorted(set(chosen) - set(here))
    if unknown:
        raise app.UsageError(
            f"Unknown or unavailable settings {unknown}; available: {sorted(here)} (MNIST settings need "
            "--mnist_dir; Fashion-MNIST ones `apt-get install dataset-fashion-mnist`)."
        )
    jobs = []
    seeds = range(_FIRST_SEED.value, _FIRST_SEED.value + _SEEDS.value)
    for seed in seeds:  # seeds outermost: a partial run still compares like with like
        for setting in chosen:
            config = SETTINGS[setting][0](_MNIST_DIR.value)
            table = {**strategies(config, setting in PEERS_ONLY), **parse_variants(_VARIANTS.value)}
            wanted = _STRATEGIES.value
            for name, overrides in table.items():
                if wanted and name not in wanted and not ("fixed" in wanted and name.startswith("fixed:")):
                    continue
                if (setting, name, seed) not in done:
                    jobs.append((setting, name, overrides, seed, _MNIST_DIR.value))
    return jobs


def _read(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().endswith("}")]


def main(argv):
    del argv
    path = os.path.join(_OUT.value, f"{_NAME.value}.jsonl")
    os.makedirs(_OUT.value, exist_ok=True)
    if not _RENDER.value:
        done = {(r["setting"], r["strategy"], r["seed"]) for r in _read(path)}
        jobs = _jobs(done)
        print(f"{len(jobs)} runs to do ({len(done)} already in {path}); {_WORKERS.value} worker(s).", flush=True)
        start = time.time()
        context = multiprocessing.get_context("spawn")
        with context.Pool(_WORKERS.value, _init_worker, (_WORKERS.value,)) as pool, open(path, "a") as out:
            for i, row in enumerate(pool.imap_unordered(_job, jobs), 1):
                if "error" in row:
                    print(f"FAILED {row['setting']} seed {row['seed']} {row['strategy']}:\n{row['error']}", flush=True)
                    continue
                out.write(json.dumps(row) + "\n")
                out.flush()
                best = row["best"]["test"] if row["best"] else row["last"]["test"]
                headline = next(best[k] for k in ("accuracy", "score", "mae") if k in best)
                print(
                    f"[{time.time() - start:6.0f}s {i}/{len(jobs)}] {row['setting']} seed {row['seed']} "
                    f"{row['strategy']}: best-checkpoint test {headline:.4f} ({row['seconds']:.0f}s)",
                    flush=True,
                )
    rows = _read(path)
    text, summary = report(rows)
    print(text)
    md, js = harness.write_results(_OUT.value, _NAME.value, text, {"summary": summary, "runs": rows})
    print(f"\nWrote {md} and {js}")


# ----------------------------------------------------------------------------- the report --


def _paired(diffs: np.ndarray) -> tuple[float, float]:
    if len(diffs) < 2:
        return float(diffs.mean()), float("nan")
    half = scipy.stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
    return float(diffs.mean()), float(half)


def _score(run: dict, when: str) -> float:
    """Test accuracy in % (several outputs: the score, the mean of accuracy and IoU, in %; higher is better)
    or test MAE (lower is better) at ``when`` (best | last)."""
    metrics = (run["best"] or run["last"]) if when == "best" else run["last"]
    test = metrics["test"]
    for key in ("accuracy", "score"):
        if key in test:
            return 100.0 * test[key]
    return test["mae"]


def _val(run: dict) -> float:
    """The best checkpoint's validation score, signed so that larger is better."""
    val = (run["best"] or run["last"])["val"]
    for key in ("accuracy", "score"):
        if key in val:
            return val[key]
    return -val["mae"]


def _is_regression(test: dict) -> bool:
    return "accuracy" not in test and "score" not in test


def _setting_table(runs: list[dict]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float], list]:
    """Per strategy: best-checkpoint scores and last scores per seed (seeds every strategy has), seconds."""
    by = {}
    for r in runs:
        by.setdefault(r["strategy"], {})[r["seed"]] = r
    seeds = sorted(set.intersection(*(set(v) for v in by.values())))
    best = {k: np.array([_score(v[s], "best") for s in seeds]) for k, v in by.items()}
    last = {k: np.array([_score(v[s], "last") for s in seeds]) for k, v in by.items()}
    seconds = {k: float(np.median([v[s]["seconds"] for s in seeds])) for k, v in by.items()}
    fixed = sorted(k for k in by if k.startswith("fixed:"))
    if fixed and seeds:  # the validation-selected sweep, and its cost (the sum of its runs)
        picks = [max(fixed, key=lambda k, s=s: _val(by[k][s])) for s in seeds]
        best["sweep"] = np.array([_score(by[k][s], "best") for k, s in zip(picks, seeds, strict=True)])
        last["sweep"] = np.array([_score(by[k][s], "last") for k, s in zip(picks, seeds, strict=True)])
        seconds["sweep"] = float(np.median([sum(by[k][s]["seconds"] for k in fixed) for s in seeds]))
    return best, last, seconds, seeds


def report(rows: list[dict]) -> tuple[str, dict]:
    """The Markdown tables and goal lines, and a JSON summary, from the runs."""
    texts, summary, beats_oracle = [], {}, []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        runs = [r for r in rows if r["setting"] == setting]
        best, last, seconds, seeds = _setting_table(runs)
        regression = _is_regression(runs[0]["last"]["test"])
        sign = -1.0 if regression else 1.0
        base = base_row(setting)
        fixed = [k for k in best if k.startswith("fixed:")]
        oracle = max(fixed, key=lambda k: sign * best[k].mean()) if fixed else None
        table_rows = []
        for name in [*fixed, "sweep", *(k for k in best if not k.startswith("fixed:") and k != "sweep")]:
            if name not in best:
                continue
            d, h = _paired(best[name] - best[base]) if base in best else (float("nan"), float("nan"))
            label = f"{name} (oracle: best on test)" if name == oracle else name
            table_rows.append(
                [
                    label,
                    f"{last[name].mean():.2f} +- {last[name].std(ddof=1) if len(seeds) > 1 else 0:.2f}",
                    f"{best[name].mean():.2f} +- {best[name].std(ddof=1) if len(seeds) > 1 else 0:.2f}",
                    "-" if name == base else f"{d:+.2f} +- {h:.2f}",
                    f"{seconds[name]:.0f}",
                ]
            )
        metric = (
            "test MAE" if regression else "test score %" if "score" in runs[0]["last"]["test"] else "test accuracy %"
        )
        headers = ["strategy", f"last step: {metric}", f"best checkpoint: {metric}", f"paired vs {base}", "seconds"]
        goals = _goals(setting, best, seconds, sign, base, oracle, regression, beats_oracle)
        texts.append(
            f"### {setting} ({len(seeds)} seeds)\n\n"
            + harness.format_table(headers, table_rows)
            + "\n\n"
            + "\n".join(f"- {g}" for g in goals)  # fmt: skip
        )
        summary[setting] = {
            "seeds": seeds,
            "best": {k: v.tolist() for k, v in best.items()},
            "last": {k: v.tolist() for k, v in last.items()},
            "seconds": seconds,
            "oracle": oracle,
            "goals": goals,
        }
    variants = sorted({k for sm in summary.values() for k in sm["best"] if k.startswith("slf_")})
    overviews = [overview(summary, slf=name) for name in ["slf", *variants]]
    texts.insert(0, "\n\n".join([*overviews, peers_overview(summary)]) + "\n")
    if beats_oracle:
        share = sum(beats_oracle) / len(beats_oracle)
        status = "met" if share >= 0.5 else "MISSED"
        texts.append(f"SLF above the oracle on {sum(beats_oracle)} of {len(beats_oracle)} noisy settings: {status}")
    return "\n\n".join(texts), summary


def overview(summary: dict, slf: str = "slf") -> str:
    """One row per setting: CE, the sweep, the oracle and ``slf`` at their best checkpoints, and SLF's cost."""
    rows = []
    for setting, sm in summary.items():
        best, last = ({k: np.asarray(v) for k, v in sm[key].items()} for key in ("best", "last"))
        if slf not in best or "sweep" not in best:
            continue
        regression = setting.startswith("diabetes")
        base = base_row(setting)
        sign = -1.0 if regression else 1.0
        d, h = _paired(sign * (best[slf] - best["sweep"]))
        rows.append(
            [
                setting,
                f"{best[base].mean():.2f}",
                f"{best['sweep'].mean():.2f}",
                f"{best[sm['oracle']].mean():.2f} ({sm['oracle'][6:]})",
                f"{last[slf].mean():.2f}",
                f"{best[slf].mean():.2f}",
                f"{d:+.2f} +- {h:.2f}",
                f"{sm['seconds'][slf] / sm['seconds']['sweep']:.2f}",
            ]
        )
    headers = [
        "setting (test acc. %; diabetes: MAE; boxes: mean of acc. and IoU, %)",
        "CE / MSE",
        "sweep",
        "oracle",
        f"{slf} last step",
        f"{slf}",
        f"{slf} - sweep (better: +)",
        "cost / sweep",
    ]
    return "All at the best-validation checkpoint unless noted.\n\n" + harness.format_table(headers, rows)


# The rows that learn from the clean split, side by side (peers_overview), in this order.
LEARNED_ROWS = ("softmax", "slf", "l2rw", "meta_weight_net", "glc", "joint")


def peers_overview(summary: dict) -> str:
    """One row per classification setting: CE, the sweep and every learned row (mean best-checkpoint test %).

    The best of CE, the sweep and the learned rows is in bold. The goal lines count, over
    the noisy settings that have the rows: SLF >= both example-weighting peers, and
    ``joint`` >= every other row. Returns "" when no setting has an example-weighting row.
    """
    chosen = {
        setting: {k: round(float(np.mean(v)), 6) for k, v in sm["best"].items()}  # a tie of seeds stays a tie
        for setting, sm in summary.items()
        if not setting.startswith("diabetes")
        and "sweep" in sm["best"]
        and {"l2rw", "meta_weight_net"} & set(sm["best"])
    }
    present = {k for means in chosen.values() for k in means}
    columns = [k for k in LEARNED_ROWS if k in present] + sorted(k for k in present if k.startswith("slf_"))
    rows, slf_ahead, joint_best = [], [], []
    for setting, all_means in chosen.items():
        means = {"CE": all_means[base_row(setting)], "sweep": all_means["sweep"]}
        means |= {k: all_means[k] for k in columns if k in all_means}
        top = max(means.values())
        cells = [f"**{means[k]:.2f}**" if means[k] == top else f"{means[k]:.2f}" if k in means else "-" for k in
                 ["CE", "sweep", *columns]]  # fmt: skip
        seconds = summary[setting]["seconds"]
        costs = " / ".join(f"{seconds[k] / seconds['sweep']:.2f}" if k in means else "-" for k in columns)
        rows.append([setting, *cells, costs])
        if "clean" in setting:
            continue
        if {"slf", "l2rw", "meta_weight_net"} <= set(means):
            slf_ahead.append(bool(means["slf"] >= max(means["l2rw"], means["meta_weight_net"])))
        if "joint" in means:
            joint_best.append(bool(means["joint"] >= top))
    if not rows:
        return ""
    headers = ["setting (test acc. %)", "CE", "sweep", *columns, f"cost / sweep: {' / '.join(columns)}"]
    goals = [
        f"SLF >= l2rw and >= meta_weight_net on {sum(slf_ahead)} of {len(slf_ahead)} noisy settings "
        f"(goal: most): {_met(2 * sum(slf_ahead) > len(slf_ahead))}",
        f"joint >= every other row on {sum(joint_best)} of {len(joint_best)} noisy settings "
        f"(goal: half): {_met(2 * sum(joint_best) >= len(joint_best))}",
    ]
    return harness.format_table(headers, rows) + "\n\n" + "\n".join(f"- {g}" for g in goals)


def _goals(setting, best, seconds, sign, base, oracle, regression, beats_oracle) -> list[str]:
    if "slf" not in best:
        return []
    out = []
    if "sweep" in best:
        d, h = _paired(sign * (best["slf"] - best["sweep"]))
        cost = seconds["slf"] / seconds["sweep"]
        if regression:
            out.append(f"SLF MAE no worse than the sweep's (paired {-d:+.3f} +- {h:.3f}): {_met(d >= 0)}")
        else:
            out.append(f"SLF >= sweep - 1 point (paired {d:+.2f} +- {h:.2f}): {_met(d >= -1)}")
        out.append(f"SLF cost {cost:.2f} of the sweep's (goal <= 0.33): {_met(cost <= 1 / 3)}")
    if base in best and not regression:
        d, h = _paired(best["slf"] - best[base])
        if "sym40" in setting:
            out.append(f"SLF >= CE + 5 points (paired {d:+.2f} +- {h:.2f}): {_met(d >= 5)}")
        if "clean" in setting:
            out.append(f"SLF within noise of CE on clean data (paired {d:+.2f} +- {h:.2f}): {_met(d + h >= 0)}")
    if oracle and "clean" not in setting:
        above = sign * best["slf"].mean() > sign * best[oracle].mean()
        beats_oracle.append(above)
        out.append(f"SLF above the oracle {oracle} ({best['slf'].mean():.2f} vs {best[oracle].mean():.2f}): {above}")
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    app.run(main)
