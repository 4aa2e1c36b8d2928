"""What the trainer writes for TensorBoard: where each metric goes, HParams values, the heatmap."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from slf_tf import summaries

RUNS = {"focal_gamma_2.0": "focal(gamma=2.0)", "mae": "mae"}


@pytest.mark.parametrize(
    "key, expected",
    [
        ("train/accuracy", ("train", "metrics/accuracy")),
        ("train/steps_per_second", ("train", "speed/steps_per_second")),
        ("eval/val_accuracy", ("validation", "metrics/accuracy")),
        ("eval/test_loss", ("test", "metrics/loss")),
        ("eval/best_accuracy", ("validation", "metrics_at_best/accuracy")),
        ("eval/best_test_accuracy", ("test", "metrics_at_best/accuracy")),
        ("slf/weight/focal_gamma_2.0", ("candidates/focal(gamma=2.0)", "slf/weight")),
        ("slf/temperature", ("decision", "slf/temperature")),
        ("slf/skipped_steps", ("decision", "diagnostics/skipped_steps")),
        ("train/main_skipped", ("decision", "diagnostics/main_skipped")),
        ("slf/weight/unknown", ("decision", "slf/weight/unknown")),
    ],
)
def test_route(key, expected):
    assert summaries.route(key, RUNS) == expected


def test_candidate_run_name_falls_back_to_the_tag_where_a_folder_cannot_carry_the_name():
    assert summaries.candidate_run_name("gce(q=0.7)", "gce_q_0.7") == "gce(q=0.7)"
    assert summaries.candidate_run_name("a/b", "a_b") == "a_b"
    assert summaries.candidate_run_name("..", "x") == "x"


def _tensors(directory):
    acc = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
    acc.Reload()
    return {t: [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(t)] for t in acc.Tags()["tensors"]}


def test_writer_routes_logs_loss_as_log10_and_writes_diagnostics_only_when_non_zero(tmp_path):
    writer = summaries.MetricWriter(str(tmp_path), candidates=RUNS)
    writer.scalars(1, {"slf/loss/mae": 100.0, "slf/skipped_steps": 0.0, "train/loss": 2.0})
    writer.scalars(2, {"slf/loss/mae": 0.01, "slf/skipped_steps": 3.0, "train/loss": 1.0})
    writer.close()
    root = os.path.join(str(tmp_path), "tensorboard")
    np.testing.assert_allclose(_tensors(os.path.join(root, "candidates", "mae"))["slf/log10_loss"], [2.0, -2.0])
    assert _tensors(os.path.join(root, "decision"))["diagnostics/skipped_steps"] == [3.0]
    assert _tensors(os.path.join(root, "train"))["metrics/loss"] == [2.0, 1.0]
    writer = summaries.MetricWriter(str(tmp_path / "b"), candidates=RUNS)
    writer.scalars(3, {"eval/best_accuracy": 0.9, "eval/best_test_accuracy": 0.8, "eval/test_accuracy": 0.7})
    writer.close()
    top = _tensors(os.path.join(str(tmp_path / "b"), "tensorboard"))  # HParams reads these from the root run
    assert top == {
        "hparams/best_validation_accuracy": [pytest.approx(0.9)],
        "hparams/test_accuracy_at_best": [pytest.approx(0.8)],
        "hparams/test_accuracy": [pytest.approx(0.7)],
    }
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]  # the flat names, raw values, all of them
    assert rows[0] == {"step": 1, "slf/loss/mae": 100.0, "slf/skipped_steps": 0.0, "train/loss": 2.0}


def test_hparams_lead_with_what_tells_runs_apart_integers_as_integers_and_named_metrics(tmp_path):
    writer = summaries.MetricWriter(str(tmp_path), candidates=RUNS)
    flat = {"batch_size": 64, "loss.strategy": "slf", "loss.candidates": ("mae", "gce(q=0.7)"), "loss.k": 3,
            "data.label_noise": 0.4, "deterministic": False}  # fmt: skip
    writer.hparams(flat, trial_id="my_run", headlines=["accuracy"])
    writer.close()
    acc = event_accumulator.EventAccumulator(os.path.join(str(tmp_path), "tensorboard"))
    acc.Reload()
    content = acc.SummaryMetadata("_hparams_/experiment").plugin_data.content
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    infos = sorted(experiment.hparam_infos, key=lambda h: h.name)  # TensorBoard's order
    assert [h.display_name for h in infos][:4] == ["loss.strategy", "loss.candidates", "loss.k", "data.label_noise"]
    assert {m.display_name for m in experiment.metric_infos} >= {
        "best validation accuracy",
        "test accuracy at the best checkpoint",
        "test accuracy at the last step",
    }
    session = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    start = plugin_data_pb2.HParamsPluginData.FromString(session).session_start_info
    assert start.group_name == "my_run"  # the trial's name in HParams, not a hash
    values = {name.split(" ")[-1]: v for name, v in start.hparams.items()}
    assert values["batch_size"].string_value == "64" and values["loss.k"].string_value == "3"
    assert values["loss.candidates"].string_value == "mae, gce(q=0.7)"
    assert values["data.label_noise"].number_value == pytest.approx(0.4)
    assert values["deterministic"].bool_value is False


def test_hparams_of_several_outputs_lead_with_each_outputs_bag_and_name_each_outputs_metrics(tmp_path):
    writer = summaries.MetricWriter(str(tmp_path), candidates=RUNS)
    flat = {"batch_size": 64, "loss.strategy": "slf", "loss.candidates": (), "heads.label.candidates": ("mae",),
            "heads.box.candidates": ("mse", "giou"), "heads.box.weight": 1.0, "loss.k": 3}  # fmt: skip
    writer.hparams(flat, trial_id="t", headlines=["label/accuracy", "box/iou"])
    writer.close()
    acc = event_accumulator.EventAccumulator(os.path.join(str(tmp_path), "tensorboard"))
    acc.Reload()
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        acc.SummaryMetadata("_hparams_/experiment").plugin_data.content
    ).experiment
    infos = sorted(experiment.hparam_infos, key=lambda h: h.name)
    assert [h.display_name for h in infos][:5] == [
        "loss.strategy", "loss.candidates", "heads.box.candidates", "heads.label.candidates", "loss.k"
    ]  # fmt: skip
    assert {m.display_name for m in experiment.metric_infos} >= {
        "best validation label/accuracy",
        "test box/iou at the best checkpoint",
    }


def test_heatmap_is_small_enough_to_read_as_a_thumbnail_and_marks_the_restart():
    names = ["cross_entropy", "label_smoothing(epsilon=0.1)", "gce(q=0.7)"]
    steps = list(range(100, 2001, 100))
    probabilities = np.random.default_rng(0).uniform(size=(len(steps), len(names)))
    plain = Image.open(io.BytesIO(summaries.selection_heatmap_png(names, steps, probabilities)))
    marked = summaries.selection_heatmap_png(names, steps, probabilities, restart_step=800)
    assert plain.size[0] <= 560  # TensorBoard's card is ~270 px: at most a 2x reduction keeps 15 pt text legible
    assert Image.open(io.BytesIO(marked)).size[0] <= 560
    red = np.asarray(Image.open(io.BytesIO(marked)).convert("RGB")).astype(int)
    assert ((red[..., 0] > 200) & (red[..., 1] < 60) & (red[..., 2] < 60)).sum() > 50  # the restart line
