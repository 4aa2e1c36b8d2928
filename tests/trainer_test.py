"""End-to-end tests of the trainer: files, TensorBoard tags, tracing, export, strategies, resume, bad input."""

import glob
import itertools
import json
import os
import re
import subprocess
import sys

import helpers
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from slf_tf.training import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_config = helpers.config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    trainer = Trainer(_config(), workdir)
    results = trainer.run()
    return trainer, results, workdir


def test_run_writes_metrics_events_checkpoints_and_exports(finished_run):
    trainer, results, workdir = finished_run
    for name in ("config.json", "metrics.jsonl", "results.json"):
        assert os.path.exists(os.path.join(workdir, name)), name
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "train/loss" in r] == [5, 10, 15, 20]
    for row in rows:
        assert all(np.isfinite(v) for k, v in row.items() if k != "step"), row
    assert json.load(open(os.path.join(workdir, "config.json")))["num_train_steps"] == 20
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(workdir, "checkpoints", "ckpt-*.index"))) == [
        "ckpt-10.index",
        "ckpt-20.index",
    ]
    assert os.path.exists(os.path.join(workdir, "export", "model.keras"))
    assert os.path.exists(os.path.join(workdir, "export", "saved_model", "saved_model.pb"))
    assert 0.0 <= results["test"]["accuracy"] <= 1.0 and np.isfinite(results["test"]["loss"])
    for w in trainer.model.trainable_variables + trainer.loss.decision_variables:
        assert np.all(np.isfinite(w.numpy()))


def _tags(directory):
    acc = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
    acc.Reload()
    return acc, set(acc.Tags()["tensors"])


def test_event_files_hold_slf_tags_with_one_run_per_candidate(finished_run):
    _, _, workdir = finished_run
    root = os.path.join(workdir, "tensorboard")
    assert sorted(os.listdir(os.path.join(root, "candidates"))) == ["cross_entropy", "focal(gamma=2.0)", "mae"]
    for candidate in ("cross_entropy", "focal(gamma=2.0)", "mae"):
        acc, tags = _tags(os.path.join(root, "candidates", candidate))
        for quantity in (
            "log10_loss",
            "selection_probability",
            "selection_frequency",
            "weight",
            "coefficient",
            "score",
        ):
            assert f"slf/{quantity}" in tags, (quantity, candidate)
        values = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("slf/selection_probability")]
        assert len(values) == 4 and all(0 <= v <= 1 for v in values)
    # Train, validation and test are runs of their own with shared tags (one chart, three colours).
    for run in ("train", "validation", "test"):
        _, tags = _tags(os.path.join(root, run))
        assert {"metrics/loss", "metrics/accuracy"} <= tags, (run, tags)
    for run in ("validation", "test"):  # at the best checkpoint, in the colours of the curves
        _, tags = _tags(os.path.join(root, run))
        assert "metrics_at_best/accuracy" in tags, (run, tags)
    assert not os.path.exists(os.path.join(root, "best"))
    _, decision = _tags(os.path.join(root, "decision"))
    assert {"slf/temperature", "slf/hypergrad_norm", "slf/selection_heatmap"} <= decision
    assert not any(t.startswith("diagnostics/") for t in decision)  # all zero on a healthy run: not written
    _, top = _tags(root)
    assert "slf/alpha" not in top and not any(t.startswith(("train/", "eval/", "slf/")) for t in top), top
    assert "_hparams_/session_start_info" in top and "_hparams_/experiment" in top


def test_steps_trace_once(finished_run):
    trainer, _, _ = finished_run
    for step in trainer._steps.values():  # with and without the decision update
        assert step.experimental_get_tracing_count() == 1
    assert trainer._eval_batch.experimental_get_tracing_count() == 1  # the last partial batch too


def test_exported_models_reload_with_same_predictions(finished_run):
    trainer, _, workdir = finished_run
    x = trainer.data.x_test[:50]
    expected = trainer.model.predict(x, verbose=0)
    reloaded = keras.models.load_model(os.path.join(workdir, "export", "model.keras"))
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
    saved = tf.saved_model.load(os.path.join(workdir, "export", "saved_model"))
    np.testing.assert_allclose(saved.serve(tf.constant(x)).numpy(), expected, rtol=1e-6, atol=1e-6)


def _final_weights(trainer):
    return [w.numpy() for w in trainer.model.trainable_variables + trainer.loss.decision_variables]


def test_mirrored_on_two_cpus_matches_one_device(tmp_path):
    assert len(tf.config.list_logical_devices("CPU")) == 2  # set up in conftest.py
    single = Trainer(_config(), str(tmp_path / "single"))
    single_results = single.run()
    mirrored = Trainer(_config(distribution="mirrored"), str(tmp_path / "mirrored"))
    assert mirrored.strategy.num_replicas_in_sync == 2
    mirrored_results = mirrored.run()
    rows = [
        [json.loads(line) for line in open(os.path.join(str(tmp_path / name), "metrics.jsonl"))]
        for name in ("single", "mirrored")
    ]
    for a, b in zip(*rows, strict=True):
        for key in a:
            if key.startswith(("train/", "slf/", "eval/")) and key != "train/steps_per_second":
                np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(mirrored_results["test"]["loss"], single_results["test"]["loss"], rtol=1e-5)
    for a, b in zip(_final_weights(single), _final_weights(mirrored), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_mirrored_runs_of_different_models_in_one_process(tmp_path):
    """A second MirroredStrategy would reuse the first one's collective keys and abort (TF #62790)."""
    first = Trainer(_config(distribution="mirrored", **{"model.hidden_units": (24,)}), str(tmp_path / "a"))
    first.run()
    second = Trainer(_config(distribution="mirrored", **{"model.hidden_units": (16, 8)}), str(tmp_path / "b"))
    assert second.strategy is first.strategy
    assert np.isfinite(second.run()["test"]["loss"])


def _trainer_command(workdir, *overrides, kill_at_step=None):
    """The trainer's command line and environment (``kill_at_step``: SIGKILL right after that step's checkpoint)."""
    program = ["-m", "trainers.classify"] if kill_at_step is None else [os.path.join(REPO, "tests", "kill_at_step.py")]
    cmd = [sys.executable, *program, "--config=configs/test.py", f"--workdir={workdir}"]
    cmd += [f"--config.{o}" for o in overrides]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
    if kill_at_step is not None:
        env["SLF_TEST_KILL_AT_STEP"] = str(kill_at_step)
    return cmd, env


def _run_trainer(workdir, *overrides, check=True, kill_at_step=None):
    cmd, env = _trainer_command(workdir, *overrides, kill_at_step=kill_at_step)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"trainer failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def test_terminal_is_plain_and_honest_on_a_healthy_cpu_run(tmp_path):
    """No error-level start-up line, no absl prefix, the ETA after tracing, the noisy-label accuracy named."""
    from trainers import quiet_start

    proc = _run_trainer(str(tmp_path / "w"), "data.label_noise=0.4")
    lines = proc.stderr.splitlines()
    if not quiet_start.gpu_device_present():
        assert not [line for line in lines if "cuInit" in line or line.startswith("E0000")], proc.stderr[:2000]
    progress = [line for line in lines if " step " in line and "/20" in line]
    assert len(progress) == 4, proc.stderr[-3000:]
    for line in progress:  # "HH:MM:SS step 5/20  loss ...", not "I1202 13:16:10.894502 1399 trainer.py:482] ..."
        assert re.fullmatch(r"\d\d:\d\d:\d\d step \d+/20  loss .*", line), line
        assert "accuracy (noisy labels)" in line
    assert progress[0].endswith("ETA after warm-up")
    assert all(re.search(r"ETA \d\d:\d\d$", line) for line in progress[1:])
    assert "(requested 40%)" in proc.stderr


def _saved_weights(workdir):
    model = keras.models.load_model(os.path.join(workdir, "export", "model.keras"))
    return [w.numpy() for w in model.trainable_variables]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    done, killed = helpers.run_side_by_side(
        [
            _trainer_command(straight, "deterministic=True"),
            _trainer_command(resumed, "deterministic=True", kill_at_step=10),
        ],
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL
    assert os.path.exists(os.path.join(resumed, "checkpoints", "ckpt-10.index"))
    assert not os.path.exists(os.path.join(resumed, "export"))
    _run_trainer(resumed, "deterministic=True")
    for a, b in zip(_saved_weights(straight), _saved_weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    a = json.load(open(os.path.join(straight, "results.json")))
    b = json.load(open(os.path.join(resumed, "results.json")))
    assert a["test"] == b["test"] and a["decision"] == b["decision"]


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"data.name": "cifar"}, r"Unknown dataset 'cifar'; known: \['digits'"),
        ({"model.name": "vgg"}, r"Unknown model 'vgg'; known: \['mlp', 'cnn', 'resnet20'\]"),
        ({"loss.strategy": "best"}, r"Unknown loss strategy 'best'; known: \['fixed'"),
        ({"loss.candidates": ("cross_entropy", "dice")}, r"Unknown classification loss 'dice'; known"),
        ({"distribution": "tpu"}, r"Unknown distribution strategy 'tpu'; known: \['default', 'mirrored'"),
        ({"distribution": "parameter_server"}, "Parameter-server training is not supported"),
        ({"optimizer.name": "lion"}, r"Unknown optimizer 'lion'; known: \['adam'"),
        ({"decision.optimizer": "lion"}, "Unknown decision optimizer 'lion'"),
        ({"decision.virtual_step": "adam"}, r"Unknown virtual_step 'adam'; known: \['sgd', 'optimizer'\]"),
        ({"best_metric": "val_mae"}, r"best_metric='val_mae' is not available for classification"),
        ({"early_stopping_patience": -1}, "early_stopping_patience must be an integer >= 0"),
        ({"loss.k": 0}, 'k must be an integer >= 1 or "inf"; got 0'),
        ({"loss.temperature.initial": 0.0}, "initial must be a finite number > 0; got 0.0"),
        ({"num_train_steps": 0}, "config.num_train_steps must be an integer >= 1; got 0"),
        ({"data.name": "mnist", "data.data_dir": "/nonexistent"}, "MNIST needs data_dir pointing at a directory"),
        ({"data.name": "tfds:fashion_mnist"}, "tfds:fashion_mnist"),
    ],
)
def test_bad_config_fails_fast_and_touches_nothing(tmp_path, overrides, match):
    workdir = tmp_path / "workdir"
    with pytest.raises(ValueError, match=match):
        Trainer(_config(**overrides), str(workdir))
    assert not workdir.exists()


def test_mnist_dir_without_idx_files(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"lacks the MNIST IDX file\(s\) \['train-labels-idx1-ubyte'"):
        Trainer(_config(**{"data.name": "mnist", "data.data_dir": str(tmp_path)}), str(tmp_path / "w"))


def test_unwritable_workdir_and_existing_files_survive(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    with pytest.raises(ValueError, match="Cannot write to workdir"):
        Trainer(_config(), str(blocker / "workdir"))
    assert blocker.read_text() == "keep me"
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine")
    with pytest.raises(ValueError):
        Trainer(_config(**{"model.name": "vgg"}), str(workdir))
    assert (workdir / "notes.txt").read_text() == "mine" and sorted(os.listdir(workdir)) == ["notes.txt"]


def test_config_override_type_error_is_reported_quickly(tmp_path):
    proc = _run_trainer(str(tmp_path / "w"), "num_train_steps=abc", check=False)
    assert proc.returncode != 0
    assert "num_train_steps" in proc.stderr and "abc" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_an_override_of_a_field_the_config_lacks_is_one_line(tmp_path):
    proc = _run_trainer(str(tmp_path / "w"), "loss.no_such_field=1", check=False)
    assert proc.returncode == 2
    assert "error: --config.loss.no_such_field: the config has no field 'no_such_field'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()


def test_best_checkpoint_is_kept_exported_and_reported(finished_run):
    trainer, results, workdir = finished_run
    best = results["best"]
    assert best["metric"] == "val_accuracy" and best["step"] in (10, 20)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    val_accuracy = {r["step"]: r["eval/val_accuracy"] for r in rows if "eval/val_accuracy" in r}
    assert best["val"]["accuracy"] == max(val_accuracy[10], val_accuracy[20])
    assert os.path.exists(os.path.join(workdir, "checkpoints", "best", f"ckpt-{best['step']}.index"))
    exported = keras.models.load_model(os.path.join(workdir, "export", "best", "model.keras"))
    x, y = trainer.data.x_test, trainer.data.y_test
    accuracy = float(np.mean(np.argmax(exported.predict(x, verbose=0), -1) == y))
    assert accuracy == pytest.approx(best["test"]["accuracy"], abs=1e-6)
    assert json.load(open(os.path.join(workdir, "results.json")))["best"] == best


def test_a_selection_split_scores_the_checkpoints_and_never_feeds_the_decision(tmp_path):
    trainer = Trainer(_config(**{"data.selection_fraction": 0.5}), str(tmp_path))
    d = trainer.data
    selected = {r.tobytes() for r in d.x_select}
    assert len(d.x_select) == len(d.x_val) and not any(r.tobytes() in selected for r in d.x_val)
    fed = np.concatenate([x_val.numpy() for _, _, _, x_val, _ in itertools.islice(trainer._iterator(0), 20)])
    assert not any(r.tobytes() in selected for r in fed)  # the decision's batches come from the other half
    best = trainer.run()["best"]
    exported = keras.models.load_model(os.path.join(str(tmp_path), "export", "best", "model.keras"))
    logits = exported.predict(d.x_select, verbose=0)
    assert best["val"]["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == d.y_select)), abs=1e-6)
    cross_entropy = keras.losses.sparse_categorical_crossentropy(d.y_select, logits, from_logits=True)
    assert best["val"]["loss"] == pytest.approx(float(np.mean(cross_entropy)), rel=1e-4)


def test_early_stopping_stops_and_a_rerun_does_not_resume(tmp_path):
    config = _config(num_train_steps=200, eval_every_steps=5, early_stopping_patience=2, best_metric="val_loss")
    config.optimizer.learning_rate = 0.5  # diverges quickly: the validation loss stops improving
    first = Trainer(config, str(tmp_path)).run()
    assert first["stopped_early"] and first["step"] < 200
    assert first["step"] - first["best"]["step"] == 2 * 5
    again = Trainer(config, str(tmp_path)).run()
    assert again["step"] == first["step"] and again["best"] == first["best"]


def test_lost_checkpoint_state_file_resumes_from_the_files(tmp_path):
    Trainer(_config(), str(tmp_path)).run()
    state = tmp_path / "checkpoints" / "checkpoint"
    state.write_text("garbage {{{")
    resumed = Trainer(_config(num_train_steps=30), str(tmp_path))
    resumed.checkpointer.restore()
    assert resumed.step == 20  # not 0: the checkpoints are found from their files
    resumed.run()
    assert os.path.exists(tmp_path / "checkpoints" / "ckpt-30.index")
    assert os.path.exists(tmp_path / "checkpoints" / "ckpt-20.index")


@pytest.mark.parametrize(
    "overrides,at",
    [
        # 32 training examples: 10 steps of 32 are 10 epochs (>= decision.restart_min_epochs).
        ({"decision.restart_fraction": 0.5, "data.max_train_examples": 32}, 10),
        (
            {
                "decision.restart_fraction": 0.0,
                "decision.restart_at_commitment": 0.01,
                "decision.restart_min_epochs": 0.0,
            },
            10,
        ),
    ],
    ids=["fraction", "commitment"],
)
def test_restart_retrains_the_main_network_once_with_the_learned_decision(tmp_path, overrides, at):
    trainer = Trainer(_config(**overrides), str(tmp_path))
    seen = {}
    apply = trainer.restart.apply

    def spy(step):
        seen["before"] = [w.numpy().copy() for w in trainer.model.trainable_variables]
        seen["decision"] = [v.numpy().copy() for v in trainer.loss.decision_variables]
        message = apply(step)
        seen["after"] = [w.numpy().copy() for w in trainer.model.trainable_variables]
        seen["decision_after"] = [v.numpy().copy() for v in trainer.loss.decision_variables]
        return message

    trainer.restart.apply = spy
    results = trainer.run()
    assert results["restarted_at"] == at
    assert any(not np.array_equal(a, b) for a, b in zip(seen["before"], seen["after"], strict=True))
    for a, b in zip(seen["decision"], seen["decision_after"], strict=True):
        np.testing.assert_array_equal(a, b)  # the decision network goes on
    assert float(trainer.main_optimizer.learning_rate.numpy()) == pytest.approx(1e-3)  # not reset
    assert int(trainer.main_optimizer.iterations.numpy()) == 20 - at  # reset at the restart
    assert Trainer(_config(**overrides), str(tmp_path)).run()["restarted_at"] == at  # recorded in the checkpoint
    text = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / "decision"))
    text.Reload()
    (event,) = text.Tensors("slf/restart")  # the restart, marked in TensorBoard at its step
    assert (
        event.step == at
        and f"Step {at}: restarted the main network" in tf.make_ndarray(event.tensor_proto).item().decode()
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"decision.restart_fraction": 0.5},
        {"decision.restart_fraction": 0.0, "decision.restart_at_commitment": 0.01},
    ],
    ids=["fraction", "commitment"],
)
def test_a_due_restart_is_skipped_before_enough_passes_over_the_training_split(tmp_path, overrides):
    # 10 steps of 32 over ~1,200 training digits: 0.27 of a pass, below decision.restart_min_epochs = 4.
    trainer = Trainer(_config(**overrides), str(tmp_path))
    trainer.restart.apply = lambda step: pytest.fail("restarted after too few passes")
    results = trainer.run()
    assert results["restarted_at"] == -2  # due and skipped: not tried again
    assert int(trainer.main_optimizer.iterations.numpy()) == 20  # the optimizer was not reset
    text = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / "decision"))
    text.Reload()
    (event,) = text.Tensors("slf/restart")
    message = tf.make_ndarray(event.tensor_proto).item().decode()
    assert event.step == 10 and "no restart" in message and "seen the training split 0.27 times" in message, message
    assert Trainer(_config(**overrides), str(tmp_path)).run()["restarted_at"] == -2  # recorded in the checkpoint


@pytest.mark.parametrize("strategy", ["uncertainty", "fixed"])
def test_strategies_not_learned_by_the_hypergradient_never_restart(tmp_path, strategy):
    overrides = {"loss.strategy": strategy, "decision.restart_fraction": 0.5}
    assert Trainer(_config(**overrides), str(tmp_path)).run()["restarted_at"] == -1


def test_jit_compile_runs_the_same_step_under_xla(tmp_path):
    # Without sampling (uniform weights) the compiled step does the same arithmetic as the plain one.
    plain = Trainer(_config(**{"loss.strategy": "uniform"}), str(tmp_path / "plain"))
    plain.run()
    xla = Trainer(_config(jit_compile=True, **{"loss.strategy": "uniform"}), str(tmp_path / "xla"))
    xla.run()
    for a, b in zip(_final_weights(plain), _final_weights(xla), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # With SLF, XLA's stateless RNG draws other (equally distributed) samples: an XLA run repeats itself.
    first = Trainer(_config(jit_compile=True), str(tmp_path / "slf1"))
    first.run()
    second = Trainer(_config(jit_compile=True), str(tmp_path / "slf2"))
    second.run()
    for a, b in zip(_final_weights(first), _final_weights(second), strict=True):
        np.testing.assert_array_equal(a, b)
    assert first._steps[True].experimental_get_tracing_count() == 1


def test_jit_compile_refuses_a_distribution():
    with pytest.raises(ValueError, match="jit_compile=True runs with distribution='default' only"):
        Trainer(_config(jit_compile=True, distribution="mirrored"), "/nonexistent/never/created")
