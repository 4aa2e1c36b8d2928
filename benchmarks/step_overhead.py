"""Per-step cost of SLF relative to a plain cross-entropy step, side by side in one process.

Run:  python -m benchmarks.step_overhead [--rounds 15] [--out benchmarks/results]
Models: the MLP on digits (64 features) and the small CNN on MNIST-shaped inputs
(synthetic 28x28 images, 10 classes), batch 128. Variants, interleaved per round:
  ce            a plain tf.function step: forward, cross-entropy, Adam
  bag_frozen    the trainer's step with the default bag (7 candidates), decision network frozen
  exact_every1  + the exact hypergradient every step (the defaults: the optimizer-aware virtual
                step with the trust region)
  exact_sgd_every1  the same with the SGD virtual step w - eta g
  exact_full_every1 the same without the trust region (the paper's full one-step lookahead)
  fd_every1     + the finite-difference hypergradient every step
  jvp_every1    + the forward-mode (JVP) hypergradient every step (auto picks it for l2rw, MWN, joint)
  exact_every10, jvp_every10  the same every 10 steps (mean over the 10-step cycle)
  l2rw, meta_weight_net, joint  the example-weighting strategies (every step, method auto: jvp for
                l2rw, whose lookahead is at w; exact, reverse over reverse, for the others); l2rw_exact,
                meta_weight_net_jvp, joint_jvp  the same by the other method
and Keras' fit, each against a plain cross-entropy fit of the same model: keras_slf_model
(SLFModel, the fused step; every step and every 10) and keras_callback (a compiled
StochasticLoss with the DecisionUpdate callback; every batch and every 10). The sequence
model (``--models sequence``: Embedding(mask_zero) -> GRU -> Dense over padded synthetic
tokens, 20 positions, 50 classes) is timed on the Keras path only: SLFModel against a
SparseCategoricalCrossentropy fit of the same model.
Goals (CPU): bag <= 1.15x, exact every 10 <= 1.3x, exact every step <= 2.5x on the
CNN, finite difference <= exact, JVP <= finite difference. Medians over rounds, and the
interquartile range of the per-round ratio; traces and graph ops (after Grappler, the same on every
machine) per step function.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import harness  # noqa: E402
from configs import digits as digits_config  # noqa: E402
from slf_tf import data as data_lib  # noqa: E402
from slf_tf import hypergrad  # noqa: E402
from slf_tf.stochastic_loss import STRATEGIES  # noqa: E402
from slf_tf.training import Trainer, input_pipeline, progress  # noqa: E402

_ROUNDS = flags.DEFINE_integer("rounds", 15, "Timing rounds (medians are over these).")
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per variant per round (a multiple of 10).")
_OUT = flags.DEFINE_string("out", "benchmarks/results", "Where step_overhead.md / .json go.")
_MODELS = flags.DEFINE_list("models", ["mlp", "cnn", "sequence"], "Which models to time (mlp, cnn, sequence).")
_KERAS = flags.DEFINE_bool("keras", True, "Also time the Keras fit path (x CE there is against a plain CE fit).")
_VARIANTS = flags.DEFINE_list("variants", [], "Only these trainer variants (beside ce); every one if empty.")
BATCH = 128


def _synthetic_mnist(n: int = 4096) -> data_lib.Dataset:
    r = np.random.default_rng(0)
    x = r.random((n, 784), dtype=np.float32)
    y = r.integers(0, 10, n).astype(np.int32)
    return data_lib.Dataset(
        "mnist_shaped", "classification", x, y, x[:1024], y[:1024], x[:256], y[:256], 10, (28, 28, 1)
    )


def _config(
    model: str,
    method: str = "exact",
    decision_every: int = 1,
    virtual_step: str = "optimizer",
    strategy: str = "slf",
    trust_region: bool = True,
):
    c = digits_config.get_config()
    c.loss.strategy = strategy
    c.decision.virtual_step = virtual_step
    c.decision.trust_region = trust_region
    c.model.name = model
    c.batch_size = BATCH
    c.num_train_steps = 10**6
    c.decision.method = method
    c.decision.every = decision_every
    c.decision.val_batch_size = BATCH
    return c


class _Variant:
    """A callable that runs ``n`` training steps of one variant."""

    def __init__(self, name: str, run_steps, traced, model: keras.Model | None = None, graph_ops=dict):
        self.name, self.run_steps, self.traced, self.model = name, run_steps, traced, model
        self.graph_ops = graph_ops  # () -> {step function: ops after Grappler} (after the first steps)


def _plain_ce(model_name: str, dataset: data_lib.Dataset) -> _Variant:
    """A plain cross-entropy step of the model the trainer's variants train (the config's sizes)."""
    keras.utils.set_random_seed(0)
    model = Trainer(_config(model_name), tempfile.mkdtemp(prefix="slf_bench_"), dataset=dataset).model
    opt = keras.optimizers.Adam(1e-3)
    opt.build(model.trainable_variables)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # The same step-indexed input pipeline as the trainer, so the ratios compare the steps alone.
    ds = iter(
        input_pipeline.step_batches(
            dataset.x_train,
            dataset.y_train,
            dataset.x_val,
            dataset.y_val,
            batch_size=BATCH,
            val_batch_size=BATCH,
            seed=0,
            start_step=0,
            num_steps=10**6,
        )
    )

    @tf.function
    def step(iterator):
        _, xb, yb, _, _ = next(iterator)
        with tf.GradientTape() as tape:
            loss = ce(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def run(n):
        out = None
        for _ in range(n):
            out = step(ds)
        return out

    traced = lambda: {"step": step.experimental_get_tracing_count()}  # noqa: E731
    return _Variant("ce", run, traced, model, lambda: {"step": harness.graph_ops(step.get_concrete_function(ds))})


def _trainer_variant(name: str, config, decision_every: int | None, dataset) -> _Variant:
    trainer = Trainer(config, tempfile.mkdtemp(prefix="slf_bench_"), dataset=dataset)
    iterator = trainer._iterator(0)
    state = {"step": 0}

    def run(n):
        out = None
        for _ in range(n):
            full = decision_every is not None and state["step"] % decision_every == 0
            out = trainer._steps[full](iterator)
            state["step"] += 1
        return out

    def traced():
        return {
            "main_step": trainer._steps[False].experimental_get_tracing_count(),
            "full_step": trainer._steps[True].experimental_get_tracing_count(),
        }

    def graph_ops():
        kinds = {"main_step": False, "full_step": True}
        return {
            kind: harness.graph_ops(trainer._steps[full].get_concrete_function(iterator))
            for kind, full in kinds.items()
            if trainer._steps[full].experimental_get_tracing_count()
        }

    return _Variant(name, run, traced, trainer.model, graph_ops)


def _trainer_variants(model_name: str) -> dict[str, tuple]:
    """``{name: (config, decision_every)}`` of the trainer's variants, in the table's order."""
    variants = {
        "bag_frozen": (_config(model_name), None),
        "exact_every1": (_config(model_name, "exact", 1), 1),
        "exact_sgd_every1": (_config(model_name, "exact", 1, "sgd"), 1),
        "exact_full_every1": (_config(model_name, "exact", 1, trust_region=False), 1),
        "fd_every1": (_config(model_name, "finite_difference", 1), 1),
        "jvp_every1": (_config(model_name, "jvp", 1), 1),
        "exact_every10": (_config(model_name, "exact", 10), 10),
        "jvp_every10": (_config(model_name, "jvp", 10), 10),
    }
    for name in ("l2rw", "meta_weight_net", "joint"):
        variants[name] = (_config(model_name, "auto", 1, strategy=name), 1)
        auto = hypergrad.resolve_method("auto", STRATEGIES[name].lookahead_from_current)
        other = "jvp" if auto == "exact" else "exact"
        variants[f"{name}_{other}"] = (_config(model_name, other, 1, strategy=name), 1)
    return variants


def _measure(model_name: str, dataset, rounds: int, steps: int):
    specs = _trainer_variants(model_name)
    unknown = sorted(set(_VARIANTS.value) - set(specs))
    if unknown:
        raise app.UsageError(f"Unknown variants {unknown}; known: {list(specs)}.")
    chosen = [name for name in specs if not _VARIANTS.value or name in _VARIANTS.value]
    variants = [_plain_ce(model_name, dataset)]
    variants += [_trainer_variant(name, *specs[name], dataset=dataset) for name in chosen]
    rss = {}
    for v in variants:  # warm-up: trace, then a few steps; record the peak-RSS growth it caused
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        harness._block(v.run_steps(10))
        rss[v.name] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024.0
    results = _time_rounds(variants, rounds, steps, "ce")
    for v in variants:
        results[v.name].update(peak_rss_growth_mb=rss[v.name], traces=v.traced(), graph_ops=v.graph_ops())
    return results


def _time_rounds(variants: list[_Variant], rounds: int, steps: int, baseline: str) -> dict[str, dict]:
    """Interleaved rounds (the order reversed every other round): per variant the median wall time of a step,
    its ratio to ``baseline`` with the per-round spread, and the same ratio in process CPU time.

    CPU time leaves out what the machine gives to others (a shared or virtual machine's steal time, which
    moves wall-clock ratios by 20% between runs here); it counts every thread of the process.
    """
    wall = {v.name: [] for v in variants}
    cpu = {v.name: [] for v in variants}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else list(reversed(variants)):
            start, start_cpu = time.perf_counter(), time.process_time()
            harness._block(v.run_steps(steps))
            wall[v.name].append((time.perf_counter() - start) / steps * 1e3)
            cpu[v.name].append((time.process_time() - start_cpu) / steps * 1e3)
    medians = {k: statistics.median(v) for k, v in wall.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        name: {
            "median_ms": medians[name],
            "ratio_to_ce": medians[name] / medians[baseline],
            "ratio_iqr": _ratio_quartiles(wall[name], wall[baseline]),
            "cpu_median_ms": cpu_medians[name],
            "cpu_ratio_to_ce": cpu_medians[name] / cpu_medians[baseline],
            "cpu_ratio_iqr": _ratio_quartiles(cpu[name], cpu[baseline]),
            "peak_rss_growth_mb": 0.0,
            "traces": {},
            "graph_ops": {},
        }
        for name in wall
    }


def _ratio_quartiles(times: list[float], ce: list[float]) -> list[float]:
    """The quartiles of the per-round ratio to the CE step (each round times both back to back): the spread."""
    ratios = [t / c for t, c in zip(times, ce, strict=True)]
    if len(ratios) < 2:  # one round: no spread to speak of
        return [ratios[0], ratios[0]]
    q = statistics.quantiles(ratios, n=4)
    return [q[0], q[2]]


def _keras_variant(name: str, model_name: str, dataset, every: int | None) -> _Variant:
    """Keras ``fit`` steps: plain cross-entropy (every=None, no SLF), SLFModel, or the DecisionUpdate callback."""
    import slf_tf
    from slf_tf import models

    keras.utils.set_random_seed(0)
    network = models.create_model(model_name, dataset.input_shape, 10, image_shape=dataset.image_shape)
    train = tf.data.Dataset.from_tensor_slices((dataset.x_train, dataset.y_train)).repeat().batch(BATCH)
    bag = list(digits_config.get_config().loss.candidates)
    callbacks = []
    if name == "keras_ce":
        model = network
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    elif name.startswith("keras_slf_model"):
        model = slf_tf.SLFModel(network, (dataset.x_val, dataset.y_val), val_batch_size=BATCH, every=every)
        model.compile(keras.optimizers.Adam(1e-3), slf_tf.StochasticLoss(bag, k=3, num_classes=10))
    else:
        model = network
        model.compile(keras.optimizers.Adam(1e-3), slf_tf.StochasticLoss(bag, k=3, num_classes=10))
        validation = tf.data.Dataset.from_tensor_slices((dataset.x_val, dataset.y_val)).repeat().batch(BATCH)
        callbacks = [slf_tf.callbacks.DecisionUpdate(train, validation, every_n_batches=every)]

    def run(n):
        return model.fit(train, epochs=1, steps_per_epoch=n, verbose=0, callbacks=callbacks).history["loss"][-1]

    return _Variant(name, run, lambda: {})


def _measure_keras(model_name: str, dataset, rounds: int, steps: int) -> dict:
    """The Keras path's step times, relative to a plain cross-entropy ``fit`` of the same model."""
    variants = [
        _keras_variant("keras_ce", model_name, dataset, None),
        _keras_variant("keras_slf_model", model_name, dataset, 1),
        _keras_variant("keras_slf_model_every10", model_name, dataset, 10),
        _keras_variant("keras_callback", model_name, dataset, 1),
        _keras_variant("keras_callback_every10", model_name, dataset, 10),
    ]
    for v in variants:
        v.run_steps(10)  # trace and build
    return _time_rounds(variants, rounds, steps, "keras_ce")


SEQUENCE_LENGTH, SEQUENCE_CLASSES = 20, 50


def _synthetic_tokens(n: int = 4096, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Padded token sequences (lengths 5-20, 0 = padding) and per-position labels."""
    r = np.random.default_rng(seed)
    x = r.integers(1, SEQUENCE_CLASSES, size=(n, SEQUENCE_LENGTH)).astype(np.int32)
    lengths = r.integers(5, SEQUENCE_LENGTH + 1, size=n)
    x[np.arange(SEQUENCE_LENGTH)[None] >= lengths[:, None]] = 0
    return x, ((x * 7 + 3) % SEQUENCE_CLASSES).astype(np.int32)


def _sequence_variant(name: str, every: int | None) -> _Variant:
    """A padded token model's ``fit``: plain cross-entropy (every=None), or SLFModel every ``every`` steps."""
    import slf_tf

    keras.utils.set_random_seed(0)
    network = keras.Sequential(
        [
            keras.Input((SEQUENCE_LENGTH,), dtype="int32"),
            keras.layers.Embedding(SEQUENCE_CLASSES, 32, mask_zero=True),
            keras.layers.GRU(64, return_sequences=True),
            keras.layers.Dense(SEQUENCE_CLASSES),
        ]
    )
    x, y = _synthetic_tokens()
    train = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(BATCH)
    if every is None:
        model = network
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    else:
        model = slf_tf.SLFModel(network, _synthetic_tokens(512, seed=1), val_batch_size=BATCH, every=every)
        model.compile(
            keras.optimizers.Adam(1e-3),
            slf_tf.StochasticLoss(list(digits_config.get_config().loss.candidates), k=3, num_classes=SEQUENCE_CLASSES),
        )

    def run(n):
        return model.fit(train, epochs=1, steps_per_epoch=n, verbose=0).history["loss"][-1]

    return _Variant(name, run, lambda: {})


def _measure_sequence(rounds: int, steps: int) -> dict:
    """The sequence model's Keras step times, relative to a plain cross-entropy ``fit`` of it."""
    variants = [
        _sequence_variant("keras_ce", None),
        _sequence_variant("keras_slf_model", 1),
        _sequence_variant("keras_slf_model_every10", 10),
    ]
    for v in variants:
        v.run_steps(10)  # trace and build
    return _time_rounds(variants, rounds, steps, "keras_ce")


GOALS = {
    "bag_frozen": ("<= 1.15x", lambda r, _: r <= 1.15),
    "exact_every10": ("<= 1.3x", lambda r, _: r <= 1.3),
    "jvp_every10": ("<= 1.3x", lambda r, _: r <= 1.3),
    "exact_every1": ("<= 2.5x (CNN)", lambda r, model: model != "cnn" or r <= 2.5),
    "fd_every1": ("<= exact", None),
    "jvp_every1": ("<= finite difference", None),
}


def main(argv):
    del argv
    progress.setup_console_logging()
    if _STEPS.value % 10:
        raise app.UsageError("--steps must be a multiple of 10 (the exact_every10 cycle).")
    setups = {"mlp": lambda: data_lib.load("digits", seed=0), "cnn": _synthetic_mnist, "sequence": lambda: None}
    unknown = sorted(set(_MODELS.value) - set(setups))
    if unknown:
        raise app.UsageError(f"Unknown models {unknown}; known: {sorted(setups)}.")
    setups = {name: setups[name]() for name in _MODELS.value}
    results, rows = {}, []
    for model_name, dataset in setups.items():
        if model_name == "sequence":
            r = _measure_sequence(_ROUNDS.value, _STEPS.value)
        else:
            r = _measure(model_name, dataset, _ROUNDS.value, _STEPS.value)
        if _KERAS.value and model_name != "sequence":
            r.update(_measure_keras(model_name, dataset, _ROUNDS.value, _STEPS.value))
        results[model_name] = r
        for name, m in r.items():
            goal, ok = GOALS.get(name, ("", None))
            if name == "fd_every1" and "exact_every1" in r:
                met = m["median_ms"] <= r["exact_every1"]["median_ms"]
            elif name == "jvp_every1" and "fd_every1" in r:
                met = m["median_ms"] <= r["fd_every1"]["median_ms"]
            elif name in ("fd_every1", "jvp_every1"):
                met = None
            else:
                met = ok(m["ratio_to_ce"], model_name) if ok else None
            status = "" if met is None else ("met" if met else "MISSED")
            traces = ", ".join(f"{k}={v}" for k, v in m["traces"].items())
            ops = ", ".join(f"{k}={v}" for k, v in m["graph_ops"].items())
            rows.append(
                [
                    model_name,
                    name,
                    m["median_ms"],
                    m["ratio_to_ce"],
                    f"{m['ratio_iqr'][0]:.2f}-{m['ratio_iqr'][1]:.2f}",
                    f"{m['cpu_ratio_to_ce']:.3f} ({m['cpu_ratio_iqr'][0]:.2f}-{m['cpu_ratio_iqr'][1]:.2f})",
                    f"{goal} {status}".strip(),
                    f"{m['peak_rss_growth_mb']:.0f}",
                    traces,
                    ops,
                ]
            )
    headers = ["model", "variant", "ms/step", "x CE", "x CE, IQR over rounds", "x CE in CPU time (IQR)", "goal",
               "peak RSS growth MB", "traces", "graph ops (after Grappler)"]  # fmt: skip
    table = harness.format_table(headers, rows)
    print(table)
    md, js = harness.write_results(
        _OUT.value,
        "step_overhead",
        table,
        {"batch": BATCH, "rounds": _ROUNDS.value, "steps": _STEPS.value, "results": results},
    )
    print(f"\nWrote {md} and {js}")


if __name__ == "__main__":
    app.run(main)
