"""What a run's logged curves say: when cross-entropy's damage starts, and when SLF commits to a candidate."""

from __future__ import annotations


def damage_step(rows: list[dict]) -> tuple[int, float, float]:
    """(step of the best validation accuracy, that accuracy, the last one)."""
    evals = [
        (r["step"], r["eval/val_accuracy"]) for r in rows if "eval/val_accuracy" in r and "eval/test_accuracy" not in r
    ]
    best = max(evals, key=lambda e: e[1])
    return best[0], best[1], evals[-1][1]


def commit_step(rows: list[dict]) -> tuple[str, int]:
    """(the final top candidate, the step from which it stays on top), by P(selected) x weight."""
    tops = []
    for r in rows:
        names = [k.split("/", 2)[2] for k in r if k.startswith("slf/selection_probability/")]
        if names:
            score = {n: r[f"slf/selection_probability/{n}"] * r[f"slf/weight/{n}"] for n in names}
            tops.append((r["step"], max(score, key=score.get)))
    final, since = tops[-1][1], tops[-1][0]
    for step, top in reversed(tops):
        if top != final:
            break
        since = step
    return final, since
