"""Workdir integrity and input validation: no silent wrong results (issue: workdir integrity)."""

import gzip
import json
import os
import shutil
import signal
import socket
import struct

import helpers
import keras
import numpy as np
import pytest
import tensorflow as tf

import slf_tf
from slf_tf import data
from slf_tf.training import Trainer

_config = helpers.config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished")
    Trainer(_config(), str(workdir)).run()
    return workdir


def _snapshot(workdir):
    names = ["config.json", "results.json", "metrics.jsonl"]
    files = {n: (workdir / n).read_bytes() for n in names}
    files["checkpoints"] = sorted(os.listdir(workdir / "checkpoints"))
    return files


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"loss.k": 3}, "loss.k"),
        ({"batch_size": 16}, "batch_size"),
        ({"optimizer.learning_rate": 0.01}, "optimizer.learning_rate"),
        ({"loss.strategy": "uniform"}, "loss.strategy"),
        ({"loss.candidates": ("cross_entropy", "focal(gamma=2.0)", "gce(q=0.7)")}, "loss.candidates"),
        ({"loss.candidates": ("cross_entropy", "mae")}, "loss.candidates"),
        ({"model.hidden_units": (16,)}, "model.hidden_units"),
        ({"data.name": "wine"}, "data.name"),
    ],
)
def test_a_changed_config_refuses_with_a_diff_and_touches_nothing(finished, overrides, field):
    before = _snapshot(finished)
    with pytest.raises(ValueError, match=rf"different config:\n  {field}: .* in the workdir, .* now\n.*new_run"):
        Trainer(_config(**overrides), str(finished))
    assert _snapshot(finished) == before


def test_fewer_steps_than_the_run_reached_refuses(finished):
    before = _snapshot(finished)
    with pytest.raises(ValueError, match="holds a run at step 20; num_train_steps=5"):
        Trainer(_config(num_train_steps=5), str(finished)).run()
    assert _snapshot(finished) == before
    assert not (finished / "config_changes.jsonl").exists()  # a refused rerun records no change


def _copy(finished, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(finished, workdir)
    return workdir


def test_checkpoints_without_config_json_refuse_and_new_run_moves_them_aside(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    os.remove(workdir / "config.json")
    with pytest.raises(ValueError, match=r"holds checkpoints but no config.json.*--new_run"):
        Trainer(_config(**{"loss.k": 3}), str(workdir))
    Trainer(_config(**{"loss.k": 3}), str(workdir), new_run=True)
    (previous,) = os.listdir(workdir / "previous_runs")
    assert (workdir / "previous_runs" / previous / "checkpoints" / "ckpt-20.index").exists()
    assert not (workdir / "checkpoints").exists()


@pytest.mark.parametrize("text", ['{"seed": 0, "loss": {"k"', "[1, 2]"], ids=["truncated", "not_an_object"])
def test_an_unreadable_config_json_refuses_naming_the_file(finished, tmp_path, text):
    workdir = _copy(finished, tmp_path)
    (workdir / "config.json").write_text(text)
    with pytest.raises(ValueError, match=r"config.json (is not valid JSON|holds a list).*--new_run"):
        Trainer(_config(), str(workdir))


def test_a_non_object_metrics_line_is_dropped_and_the_final_row_is_not_duplicated(finished, tmp_path, caplog):
    workdir = _copy(finished, tmp_path)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write("[1, 2]\n")
    Trainer(_config(), str(workdir)).run()  # a finished run: re-evaluates
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert all(isinstance(r, dict) for r in rows) and "not a JSON object" in caplog.text
    assert len([r for r in rows if "eval/test_accuracy" in r]) == 1


@pytest.mark.parametrize("damage", ["remove_record", "garble_record", "remove_checkpoint"])
def test_a_broken_best_checkpoint_warns_and_its_old_export_is_moved_aside(finished, tmp_path, caplog, damage):
    workdir = _copy(finished, tmp_path)
    best = workdir / "checkpoints" / "best"
    if damage == "remove_record":
        os.remove(best / "best.json")
    elif damage == "garble_record":
        (best / "best.json").write_text('{"step": 2')
    else:
        for path in best.glob("ckpt-*"):
            os.remove(path)
    results = Trainer(_config(), str(workdir)).run()
    assert results["best"] is None
    assert "best.json" in caplog.text and "no best checkpoint is reported or exported" in caplog.text
    assert not (workdir / "export" / "best").exists()
    (stale,) = (workdir / "export").glob("best.stale-*")
    assert (stale / "model.keras").exists()  # moved aside, not deleted


def test_two_new_runs_within_a_second_keep_both_old_runs(tmp_path):
    from slf_tf.training import workdir as workdir_lib

    files = workdir_lib.Workdir(str(tmp_path))
    for k in (1, 2):
        (tmp_path / "config.json").write_text(json.dumps({"k": k}))
        files._move_run_aside()
    moved = sorted(os.listdir(tmp_path / "previous_runs"))
    assert len(moved) == 2
    assert sorted(json.load(open(tmp_path / "previous_runs" / m / "config.json"))["k"] for m in moved) == [1, 2]


def test_a_diverged_run_exports_nothing_keeps_no_best_and_says_why(tmp_path):
    from slf_tf.training import train_and_evaluate

    config = _config(**{"optimizer.learning_rate": 1e30})
    match = r"diverged: at step 20 .*steps had no finite loss.*learning_rate \(now 1e\+30\)"
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(config, str(tmp_path))
    results = json.load(open(tmp_path / "results.json"))
    assert results["diverged"] and results["best"] is None
    assert not (tmp_path / "export").exists()


def test_more_steps_and_logging_changes_resume_and_are_recorded(tmp_path):
    Trainer(_config(), str(tmp_path)).run()
    results = Trainer(_config(num_train_steps=30, log_every_steps=10), str(tmp_path)).run()
    assert results["step"] == 30
    changes = [json.loads(line) for line in open(tmp_path / "config_changes.jsonl")]
    assert {c["field"] for c in changes} == {"num_train_steps", "log_every_steps"}
    assert json.load(open(tmp_path / "config.json"))["num_train_steps"] == 30
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl") if "train/loss" in line]
    assert steps == sorted(set(steps))  # no duplicated steps


def test_new_run_moves_the_old_one_aside(tmp_path):
    Trainer(_config(), str(tmp_path)).run()
    Trainer(_config(**{"loss.k": 3}), str(tmp_path), new_run=True).run()
    (previous,) = os.listdir(tmp_path / "previous_runs")
    old = tmp_path / "previous_runs" / previous
    assert json.load(open(old / "config.json"))["loss"]["k"] == 2
    assert os.path.exists(old / "checkpoints" / "ckpt-20.index") and os.path.exists(old / "results.json")
    assert json.load(open(tmp_path / "config.json"))["loss"]["k"] == 3


def test_a_live_lock_refuses_naming_the_holder_and_a_stale_one_is_taken_over(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    holder = {"pid": 1, "host": socket.gethostname(), "started": "then"}  # pid 1 is alive
    (tmp_path / ".lock").write_text(json.dumps(holder))
    with pytest.raises(ValueError, match=r"in use by pid 1 on host .* delete .*\.lock"):
        Trainer(_config(), str(tmp_path))
    (tmp_path / ".lock").write_text(json.dumps({**holder, "pid": 2**22 + 12345}))  # no such process
    Trainer(_config(), str(tmp_path)).run()
    assert not (tmp_path / ".lock").exists()  # released at the end of the run


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path):
    Trainer(_config(num_train_steps=10), str(tmp_path)).run()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 15, "train/lo')  # a crash mid-write
    Trainer(_config(num_train_steps=20), str(tmp_path)).run()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]  # parses
    assert max(r["step"] for r in rows) == 20


def test_export_never_writes_through_a_link_out_of_the_workdir(tmp_path):
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    workdir = tmp_path / "w"
    workdir.mkdir()
    os.symlink(victim, workdir / "export")
    with pytest.raises(ValueError, match="is a link to .*outside the workdir"):
        Trainer(_config(), str(workdir))
    assert sorted(os.listdir(victim)) == ["precious.txt"]


@pytest.mark.parametrize("name", ["results.json", "metrics.jsonl"])
def test_run_files_that_are_folders_fail_before_training(tmp_path, name):
    (tmp_path / name).mkdir(parents=True)
    with pytest.raises(ValueError, match=f"{name} is a folder; it must be a file"):
        Trainer(_config(), str(tmp_path))


def test_bad_config_values_leave_no_workdir(tmp_path):
    for overrides in ({"optimizer.learning_rate": float("nan")}, {"max_checkpoints": 0}, {"seed": -1}):
        with pytest.raises(ValueError, match="must be"):
            Trainer(_config(**overrides), str(tmp_path / "w"))
        assert not (tmp_path / "w").exists()


def _write_idx(path, array):
    codes = {np.uint8: 0x08, np.int8: 0x09}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _mnist_dir(tmp_path, train_labels, test_labels):
    r = np.random.default_rng(0)
    for split, labels in (("train", train_labels), ("t10k", test_labels)):
        labels = np.asarray(labels)
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", r.integers(0, 255, (len(labels), 28, 28), np.uint8))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels.astype(labels.dtype))
    return str(tmp_path)


@pytest.mark.parametrize(
    "train,test,match",
    [
        (np.array([0, 1, 200] * 20, np.uint8), np.array([0, 1], np.uint8), r"run up to 200 but \[2, 3"),
        (np.array([0, 1, -1] * 20, np.int8), np.array([0, 1], np.int8), "whole class ids >= 0"),
        (np.array([0, 1, 2] * 20, np.uint8), np.array([0, 3], np.uint8), r"classes \[3\] appear only in the test"),
    ],
)
def test_impossible_idx_labels_are_refused(tmp_path, train, test, match):
    with pytest.raises(ValueError, match=match):
        data.load("mnist", data_dir=_mnist_dir(tmp_path, train, test))


def test_idx_headers_are_checked_before_reading(tmp_path):
    path = tmp_path / "big-idx.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 120_000, 28, 28))  # 94 MB declared, nothing there
    with pytest.raises(ValueError, match=r"over the 0.0 GiB cap \(data.max_load_gb\)"):
        data.load_idx(str(path), max_bytes=1000)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        data.load_idx(str(path))
    zero = tmp_path / "zero-idx"
    zero.write_bytes(bytes([0, 0, 0x08, 0]))
    with pytest.raises(ValueError, match="declares 0 dimensions"):
        data.load_idx(str(zero))


@pytest.mark.parametrize(
    "labels",
    [[0, 1, 7], [0, -1, 2], [0.0, 2.7, 1.0], [0.0, float("nan"), 1.0], np.array([0, 2**40, 1], np.int64)],
    ids=["too_large", "negative", "fractional", "nan", "wraps_int32"],
)
def test_impossible_labels_are_refused_by_the_loss(labels):
    loss = slf_tf.StochasticLoss(["cross_entropy", "mae"], k=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Labels must be whole class ids"):
        loss(np.asarray(labels), np.zeros((3, 4), np.float32))


@pytest.mark.parametrize("rows", [[[0.5, 0.6, 0, 0]], [[-0.5, 1.5, 0, 0]]], ids=["sum_not_1", "negative"])
def test_soft_labels_must_be_distributions(rows):
    loss = slf_tf.UniformLoss(["cross_entropy"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="One-hot/soft labels must be non-negative rows"):
        loss(np.asarray(rows, np.float32), np.zeros((1, 4), np.float32))


def test_softmax_outputs_with_from_logits_warn_once():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="softmax")])
    loss = slf_tf.UniformLoss(["cross_entropy"])
    model.compile(loss=loss, optimizer="sgd")
    with pytest.warns(UserWarning, match="produced by a Softmax and so holds probabilities"):
        model.fit(np.zeros((8, 3)), np.zeros(8), verbose=0, epochs=1)


def test_non_finite_sample_weight_never_reaches_the_weights():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.compile(loss=slf_tf.UniformLoss(["cross_entropy", "mae"]), optimizer="sgd")
    weights = np.ones(16, np.float32)
    weights[3] = np.nan
    model.fit(np.random.default_rng(0).normal(size=(16, 3)), np.arange(16) % 4, sample_weight=weights, verbose=0)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    with pytest.raises(ValueError, match=r"sample_weight must hold one weight per example"):
        slf_tf.UniformLoss(["cross_entropy"])(np.zeros(4), np.zeros((4, 3), np.float32), sample_weight=np.ones((4, 2)))


def test_sigterm_during_the_final_evaluation_finishes_the_run(tmp_path, caplog):
    trainer = Trainer(_config(num_train_steps=10), str(tmp_path))
    evaluate, calls = trainer.evaluate, []

    def evaluate_then_sigterm(split):  # the final evaluation is the last "test" call
        calls.append(split)
        if split == "test" and calls.count("test") == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(split)

    trainer.evaluate = evaluate_then_sigterm
    results = trainer.run()
    assert results["step"] == 10 and "preempted" not in results
    assert "SIGTERM during the final evaluation" in caplog.text
    assert json.load(open(tmp_path / "results.json"))["step"] == 10 and not (tmp_path / ".lock").exists()


def test_export_on_a_full_disk_names_the_directory_and_the_fix(tmp_path, monkeypatch):
    """Disk full during the export: an OSError naming where and what to do, not a traceback from deep in Keras."""
    import errno

    from slf_tf.training import export as export_lib

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save", full)
    directory = str(tmp_path / "export")
    with pytest.raises(OSError, match=r"Could not export the model to .*export \(No space left on device\).*rerun"):
        export_lib.export_model(model, directory)
