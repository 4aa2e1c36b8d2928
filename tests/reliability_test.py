"""Reliability: preemption, the non-finite guard, corrupt checkpoints, determinism, mixed precision."""

import json
import os
import signal
import subprocess
import sys
import time

import helpers
import keras
import numpy as np
import pytest
import tensorflow as tf

from slf_tf import losses
from slf_tf.training import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@losses.register("explodes_on_label_3", "classification")
def _explodes_on_label_3(t):
    """Cross-entropy times 1e38: overflows to inf on batches that hold label 3 (and is huge elsewhere)."""
    big = tf.where(tf.reduce_any(t.y[:, 3] > 0), tf.constant(np.inf, t.y.dtype), 1.0)
    return -tf.reduce_sum(t.y * t.log_p, -1) * big


@losses.register("always_nan", "classification")
def _always_nan(t):
    return tf.reduce_sum(t.y, -1) * np.nan


_config = helpers.config


def _all_finite(trainer):
    return all(np.all(np.isfinite(v.numpy())) for v in trainer.model.variables + trainer.loss.decision_variables)


def test_exploding_candidate_is_masked_and_counted(tmp_path):
    trainer = Trainer(_config(**{"loss.candidates": ("cross_entropy", "explodes_on_label_3", "mae")}), str(tmp_path))
    results = trainer.run()
    assert _all_finite(trainer)
    assert np.isfinite(results["test"]["loss"])
    masked = trainer.loss.masked_counts.numpy()
    assert masked[1] > 0 and masked[0] == 0 and masked[2] == 0
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert max(r.get("slf/masked_count", 0) for r in rows) == masked.sum()
    assert int(trainer.loss.skipped_steps.numpy()) == 0


def test_all_candidates_non_finite_skips_every_step(tmp_path):
    overrides = {"loss.candidates": ("always_nan",), "loss.k": 1, "decision.restart_fraction": 0.0}  # no re-init
    trainer = Trainer(_config(**overrides), str(tmp_path))
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    trainer.run()
    assert int(trainer.loss.skipped_steps.numpy()) == 20
    for a, b in zip(before, trainer.model.trainable_variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())  # nothing was learned, nothing became NaN


def test_gradient_clipping_for_both_networks(tmp_path):
    trainer = Trainer(_config(**{"optimizer.clipnorm": 0.1, "decision.clipnorm": 0.01}), str(tmp_path))
    assert trainer.main_optimizer.global_clipnorm == 0.1 and trainer.decision_optimizer.global_clipnorm == 0.01
    trainer.run()
    assert _all_finite(trainer)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    Trainer(_config(), str(tmp_path)).run()
    data_file = next(p for p in os.listdir(tmp_path / "checkpoints") if p.startswith("ckpt-20.data"))
    path = tmp_path / "checkpoints" / data_file
    path.write_bytes(path.read_bytes()[:100])  # truncated
    corrupted = path.read_bytes()
    resumed = Trainer(_config(), str(tmp_path))
    resumed.checkpointer.restore()
    assert resumed.step == 10
    assert "unreadable" in caplog.text
    assert path.read_bytes() == corrupted  # nothing deleted or rewritten
    assert _all_finite(resumed)


def test_mixed_bfloat16_trains_without_nan(tmp_path):
    trainer = Trainer(_config(mixed_precision="mixed_bfloat16"), str(tmp_path))
    assert trainer.model.layers[-1].compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in trainer.loss.decision_variables)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    results = trainer.run()
    assert _all_finite(trainer) and np.isfinite(results["test"]["loss"])
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    scores = [v for row in rows for k, v in row.items() if k.startswith("slf/score/")]
    assert scores and np.all(np.isfinite(scores))


def _cmd(workdir, *overrides):
    cmd = [sys.executable, "-m", "trainers.classify", "--config=configs/test.py", f"--workdir={workdir}"]
    return cmd + [f"--config.{o}" for o in overrides]


def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _exported(workdir):
    return [w.numpy() for w in keras.models.load_model(os.path.join(workdir, "export", "model.keras")).weights]


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(tmp_path):
    steps = ("num_train_steps=400", "checkpoint_every_steps=1000", "log_every_steps=5", "deterministic=True")
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    uninterrupted = subprocess.Popen(_cmd(straight, *steps), cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(_cmd(interrupted, *steps), cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(interrupted, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGTERM: saved a checkpoint at step" in err
    saved = [f for f in os.listdir(os.path.join(interrupted, "checkpoints")) if f.endswith(".index")]
    (index,) = saved
    stopped_at = int(index[len("ckpt-") : -len(".index")])
    assert 0 < stopped_at < 400, "the run finished before SIGTERM arrived"
    assert not os.path.exists(os.path.join(interrupted, "export"))
    resumed = subprocess.run(
        _cmd(interrupted, *steps), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err[-2000:]
    for a, b in zip(_exported(straight), _exported(interrupted), strict=True):
        np.testing.assert_array_equal(a, b)


def test_same_seed_gives_bitwise_identical_weights(tmp_path):
    runs = [str(tmp_path / name) for name in ("a", "b", "c")]
    overrides = [("deterministic=True",), ("deterministic=True",), ("deterministic=True", "seed=1")]
    commands = [(_cmd(workdir, *o), _env()) for workdir, o in zip(runs, overrides, strict=True)]
    for done in helpers.run_side_by_side(commands, cwd=REPO):
        assert done.returncode == 0, done.stderr[-2000:]
    for a, b in zip(_exported(runs[0]), _exported(runs[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(_exported(runs[0]), _exported(runs[2]), strict=True))


@pytest.mark.parametrize("value", ["float16", "bf16"])
def test_unknown_mixed_precision_policy(tmp_path, value):
    with pytest.raises(ValueError, match=f"Unknown mixed_precision '{value}'"):
        Trainer(_config(mixed_precision=value), str(tmp_path / "w"))


def test_batch_not_divisible_by_replicas(tmp_path):
    with pytest.raises(ValueError, match=r"config.batch_size=31 must be divisible by the number of replicas \(2\)"):
        Trainer(_config(distribution="mirrored", batch_size=31), str(tmp_path / "w"))


@pytest.mark.parametrize("mirrored", [False, True])
def test_skipped_step_leaves_weights_and_adam_state_untouched(mirrored):
    """A non-finite gradient skips the update outright: a zero-gradient Adam step would move w by momentum."""
    from slf_tf import train_step
    from slf_tf.training import factories

    strategy = factories.create_distribution_strategy("mirrored" if mirrored else "default")
    with strategy.scope():
        w = keras.Variable(np.ones(3, np.float32))
        opt = keras.optimizers.Adam(0.1)
        opt.build([w])

    @tf.function
    def step(g):
        return strategy.run(lambda g: train_step.guarded_apply(opt, [g], [w]), args=(g,))

    def state():
        return [w.numpy().copy()] + [v.numpy().copy() for v in opt.variables]

    step(tf.constant([1.0, 2.0, 3.0]))
    before = state()
    skipped = step(tf.constant([np.nan, 2.0, 3.0]))
    skipped = strategy.experimental_local_results(skipped)
    assert all(float(s) == 1.0 for s in skipped)
    for a, b in zip(before, state(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(strategy.experimental_local_results(step(tf.constant([1.0, 2.0, 3.0])))[0]) == 0.0
    assert int(opt.iterations.numpy()) == 2 and np.all(w.numpy() < before[0])
    assert step.experimental_get_tracing_count() == 1
