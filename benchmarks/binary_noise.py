"""Noisy labels on a sigmoid output: SLF's binary bag with and without its robust candidates.

A single-logit classifier is what most binary models are, and its bag was ``bce``, ``focal_bce`` and
``binary_hinge``: nothing bounded, so nothing for SLF to pick under label noise. This runs the Keras path
(``SLFModel.fit`` with the ``Restart`` callback, as a user would) on breast cancer with flipped training
labels and a clean validation split, under the fair protocol of ``benchmarks/quality.py``: every run scored
at its best clean-validation epoch, the sweep picking the fixed loss with the best validation score.

    python -m benchmarks.binary_noise --seeds 5 --noise 0.2,0.3,0.4 --dataset breast_cancer  # 105 fits, ~25 min
"""

from __future__ import annotations

import json
import statistics
import time

from absl import app, flags

from benchmarks import harness

ROBUST = ("mae", "gce(q=0.7)")
BAG_WITHOUT_ROBUST = ("bce", "focal_bce(gamma=2.0)", "binary_hinge")
BAG = BAG_WITHOUT_ROBUST + ROBUST
BATCH = 64


# dataset -> (the main network's hidden units, training steps of 64): the quality benchmark's for that data.
DATASETS = {"breast_cancer": ((64, 32), 1000), "digits_lt5": ((128, 64), 1500)}


def _dataset(name: str, noise: float, seed: int):
    """Train / clean validation / test arrays, labels as float targets of one output.

    ``breast_cancer``: the quality benchmark's split with its label noise (for two classes, a flip).
    ``digits_lt5``: digits' clean split, the label "digit < 5", a fraction ``noise`` of training labels flipped.
    """
    import numpy as np

    from benchmarks import quality_settings
    from slf_tf import data as data_lib

    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known: {sorted(DATASETS)}.")
    setting = "breast_cancer_sym30" if name == "breast_cancer" else "digits_clean"
    config = quality_settings.SETTINGS[setting][0]("")
    config.data.label_noise = noise if name == "breast_cancer" else 0.0
    d = data_lib.from_config(config.data, seed)
    ys = [d.y_train, d.y_val, d.y_test]
    if name == "digits_lt5":
        ys = [(y < 5).astype(np.int32) for y in ys]
        ys[0] = data_lib.noisy_labels(ys[0], 2, noise, "symmetric", np.random.default_rng([seed, 2]))[0]
    y_train, y_val, y_test = (y.astype("float32")[:, None] for y in ys)
    return d.x_train, y_train, d.x_val, y_val, d.x_test, y_test


def run_once(row: str, noise: float, seed: int, dataset: str = "breast_cancer", steps: int = 0) -> dict:
    """One fit; the test accuracy at the best validation epoch (first best), and SLF's final choice.

    ``steps`` 0: the dataset's budget (``DATASETS``).
    """
    import keras
    import numpy as np

    import slf_tf

    x, y, x_val, y_val, x_test, y_test = _dataset(dataset, noise, seed)
    hidden, budget = DATASETS[dataset]
    steps = steps or budget
    keras.utils.set_random_seed(seed)
    network = keras.Sequential(
        [keras.Input(x.shape[1:]), *(keras.layers.Dense(n, activation="relu") for n in hidden), keras.layers.Dense(1)]
    )
    if row.startswith("fixed:"):
        loss = slf_tf.create_loss("fixed", [row[6:]], task="binary", seed=seed)
    else:
        bag = BAG if row == "slf" else BAG_WITHOUT_ROBUST
        loss = slf_tf.StochasticLoss(
            list(bag), task="binary", seed=seed, temperature=slf_tf.schedules.ExponentialAnneal(2.0, 2e-3, 0.5)
        )
    model = slf_tf.SLFModel(network, validation_data=(x_val, y_val))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    accuracy = lambda xs, ys: float(np.mean((network(xs).numpy() > 0) == (ys > 0.5)))  # noqa: E731
    scores: list[tuple[float, float]] = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: scores.append((accuracy(x_val, y_val), accuracy(x_test, y_test)))
    )
    per_epoch = -(-len(x) // BATCH)
    callbacks = [record] + ([] if row.startswith("fixed:") else [slf_tf.callbacks.Restart(0.4, seed=seed)])
    model.fit(x, y, batch_size=BATCH, epochs=max(1, steps // per_epoch), shuffle=True, verbose=0,
              callbacks=callbacks)  # fmt: skip
    best = max(range(len(scores)), key=lambda i: (scores[i][0], -i))
    result = {"dataset": dataset, "row": row, "noise": noise, "seed": seed, "val": scores[best][0],
              "test": scores[best][1]}  # fmt: skip
    if not row.startswith("fixed:"):
        p = loss.selection_probabilities()
        result["choice"] = {name: round(float(v), 3) for name, v in zip(loss.bag.names, np.asarray(p), strict=True)}
    return result


def _rows() -> list[str]:
    return [f"fixed:{name}" for name in BAG] + ["slf_without_robust", "slf"]


def summarise(results: list[dict]) -> tuple[str, dict]:
    """Per noise: each row's median test accuracy, the validation-selected sweep, SLF - sweep per seed."""
    lines = ["| flipped | " + " | ".join(_rows()) + " | sweep | SLF − sweep (per seed) | SLF's top candidate |",
             "|---" * (len(_rows()) + 4) + "|"]  # fmt: skip
    payload = {}
    for noise in sorted({r["noise"] for r in results}):
        at = [r for r in results if r["noise"] == noise]
        seeds = sorted({r["seed"] for r in at})
        by = {(r["row"], r["seed"]): r for r in at}
        sweep = {}
        for s in seeds:
            fixed = [by[(f"fixed:{n}", s)] for n in BAG if (f"fixed:{n}", s) in by]
            sweep[s] = max(fixed, key=lambda r: r["val"])["test"] if fixed else float("nan")
        median = {row: statistics.median(by[(row, s)]["test"] for s in seeds if (row, s) in by) for row in _rows()
                  if any((row, s) in by for s in seeds)}  # fmt: skip
        gaps = [by[("slf", s)]["test"] - sweep[s] for s in seeds if ("slf", s) in by]
        tops = [max(by[("slf", s)]["choice"].items(), key=lambda kv: kv[1])[0] for s in seeds if ("slf", s) in by]
        cells = [f"{100 * median[row]:.2f}" if row in median else "" for row in _rows()]
        lines.append(
            f"| {noise:.0%} | " + " | ".join(cells) + f" | {100 * statistics.median(sweep.values()):.2f} | "
            + ", ".join(f"{100 * g:+.1f}" for g in gaps) + " | " + ", ".join(tops) + " |"
        )  # fmt: skip
        payload[str(noise)] = {"median_test": median, "sweep_per_seed": sweep, "slf_minus_sweep": gaps,
                               "slf_top": tops}  # fmt: skip
    return "\n".join(lines), payload


FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined only when run as a script, so tests can import this module beside ``benchmarks.quality``."""
    flags.DEFINE_integer("seeds", 5, "Seeds per (noise, row), from --first_seed.")
    flags.DEFINE_integer("first_seed", 0, "The first seed.")
    flags.DEFINE_list("noise", ["0.2", "0.3", "0.4"], "Fractions of training labels flipped.")
    flags.DEFINE_enum("dataset", "breast_cancer", sorted(DATASETS), "The data (see _dataset).")
    flags.DEFINE_integer("steps", 0, "Training steps of 64 (0: the quality benchmark's budget for the data).")
    flags.DEFINE_string("out", "benchmarks/results", "Where binary_noise_<dataset>.md / .json go.")


def main(argv):
    del argv
    results = []
    start = time.time()
    seeds = range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds)
    jobs = [(row, float(n), s) for n in FLAGS.noise for s in seeds for row in _rows()]
    for i, (row, noise, seed) in enumerate(jobs):
        results.append(run_once(row, noise, seed, FLAGS.dataset, FLAGS.steps))
        print(f"[{i + 1}/{len(jobs)}, {time.time() - start:.0f} s] {json.dumps(results[-1])}", flush=True)
    table, payload = summarise(results)
    print(table)
    harness.write_results(FLAGS.out, f"binary_noise_{FLAGS.dataset}", table, {"results": results, "summary": payload})


if __name__ == "__main__":
    _define_flags()
    app.run(main)
