"""The trainer with several outputs (issue 18): ``digits_boxes``, a head per output, a config per head."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import digits_boxes
from slf_tf import data, heads, metrics, models
from slf_tf.training import Trainer, config_checks


def _config(**overrides):
    return config_checks.with_overrides(digits_boxes.get_test_config(), overrides)


# ------------------------------------------------------------------ data --


def test_digits_boxes_are_a_pure_function_of_the_seed_and_the_box_holds_the_digit():
    a, b = data.load("digits_boxes", seed=3, canvas=16), data.load("digits_boxes", seed=3, canvas=16)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train["box"], b.y_train["box"])
    assert a.task == "multi_output" and a.outputs == {"label": "classification", "box": "box"}
    assert a.image_shape == (16, 16, 1) and a.num_classes == 10
    for x, y in ((a.x_train, a.y_train), (a.x_val, a.y_val), (a.x_test, a.y_test)):
        boxes = y["box"]
        assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 2:] > boxes[:, :2])
        for image, box in zip(x[:50].reshape(-1, 16, 16), boxes[:50], strict=True):
            x0, y0, x1, y1 = np.round(box * 16).astype(int)
            inside = image[y0:y1, x0:x1].sum()
            assert inside > 0 and np.isclose(image.sum(), inside)  # every pixel of the digit is in its box
    other = data.load("digits_boxes", seed=4, canvas=16)
    assert not np.array_equal(other.y_train["box"][:20], a.y_train["box"][:20])


def test_digits_boxes_noise_touches_training_targets_only_unless_asked():
    clean = data.load("digits_boxes", seed=0)
    noisy = data.load("digits_boxes", seed=0, label_noise=0.4, box_jitter=0.05, outlier_fraction=0.2)
    np.testing.assert_array_equal(noisy.x_train, clean.x_train)
    flipped = noisy.y_train["label"] != clean.y_train["label"]
    np.testing.assert_array_equal(flipped, noisy.noise_mask_train)
    assert 0.33 < flipped.mean() < 0.47  # 1,168 labels at 40%: +-4 standard deviations
    moved = np.abs(noisy.y_train["box"] - clean.y_train["box"]).max(axis=1)
    assert np.all(moved > 0) and 0.03 < np.median(moved) < 0.15
    for split in ("val", "test"):
        for output in ("label", "box"):
            np.testing.assert_array_equal(getattr(noisy, f"y_{split}")[output], getattr(clean, f"y_{split}")[output])
    dirty = data.load("digits_boxes", seed=0, label_noise=0.4, clean_validation=False)
    assert np.mean(dirty.y_val["label"] != clean.y_val["label"]) > 0.25
    np.testing.assert_array_equal(dirty.y_test["label"], clean.y_test["label"])


def test_digits_boxes_copies_paste_each_training_and_test_digit_again_elsewhere():
    one, three = data.load("digits_boxes", seed=1, canvas=16), data.load("digits_boxes", seed=1, canvas=16, copies=3)
    assert len(three.x_train) == 3 * len(one.x_train) and len(three.x_test) == 3 * len(one.x_test)
    assert len(three.x_val) == len(one.x_val)  # the clean split keeps one placement per digit
    np.testing.assert_array_equal(three.y_train["label"][::3], one.y_train["label"])  # the same digits, in order
    assert not np.array_equal(three.y_train["box"][0::3], three.y_train["box"][1::3])  # placed elsewhere


def test_digits_boxes_bad_values_are_named():
    with pytest.raises(ValueError, match=r"data.canvas must be an integer in \[8, 256\].*got 4"):
        data.load("digits_boxes", canvas=4)
    with pytest.raises(ValueError, match=r"random boxes must be in \[0, 1\); got 1.5"):
        data.load("digits_boxes", outlier_fraction=1.5)
    with pytest.raises(ValueError, match=r"data.copies must be an integer in \[1, 100\].*got 0"):
        data.load("digits_boxes", copies=0)


# ---------------------------------------------------------------- models --


def test_a_model_with_outputs_gives_logits_and_valid_boxes():
    model = models.create_model(
        "cnn",
        (256,),
        1,
        image_shape=(16, 16, 1),
        filters=(4,),
        outputs={"label": ("classification", 10), "box": ("box", 4)},  # fmt: skip
    )
    out = model(np.random.default_rng(0).normal(size=(5, 256)).astype("float32") * 10)
    assert out["label"].shape == (5, 10) and out["box"].shape == (5, 4)
    box = out["box"].numpy()
    assert np.all(box[:, 2:] >= box[:, :2]) and np.all((box >= -0.5) & (box <= 1.5))
    with pytest.raises(ValueError, match=r"Output 'box' is \('box', 3\).*a box has size 4"):
        models.create_model("mlp", (4,), 1, outputs={"box": ("box", 3)})
    with pytest.raises(ValueError, match=r"kind in \['classification', 'regression', 'box'\]"):
        models.create_model("mlp", (4,), 1, outputs={"mask": ("segmentation", 3)})


# --------------------------------------------------------------- metrics --


def test_box_metrics_against_hand_computed_values():
    y = np.array([[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0, 0, 0.2, 0.2]], "float32")
    p = np.array([[0, 0, 1, 1], [0.25, 0, 0.75, 0.5], [0.5, 0.5, 0.7, 0.7]], "float32")
    sums = metrics.task_sums("box", y, p)
    # IoU: 1; overlap 0.125 over union 0.375 = 1/3; no overlap: 0.
    np.testing.assert_allclose(sums["iou"], 1 + 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(sums["mae"], 0 + 0.125 + 0.5, rtol=1e-6)
    means = {"label/accuracy": 0.8, "box/iou": 0.6, "box/mae": 0.1}
    outputs = {"label": "classification", "box": "box"}
    assert metrics.headlines("multi_output", outputs) == ["label/accuracy", "box/iou"]
    assert metrics.headline_score(means, outputs) == pytest.approx(0.7)
    assert metrics.headline_score({"a/accuracy": 0.8, "b/mae": 0.2}, {"a": "classification", "b": "regression"}) == (
        pytest.approx(0.3)
    )
    assert metrics.higher_is_better("val_box/iou") and not metrics.higher_is_better("val_box/mae")


# ---------------------------------------------------------- config checks --


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"heads.box.fixed": "huber(delta=0.1)"}, r"heads.box.fixed='huber\(delta=0.1\)' is not in"),
        ({"heads.box.candidates": ("mse", "cross_entropy")}, "Unknown regression loss 'cross_entropy'"),
        ({"heads.label.strategy": "l2rw"}, r"heads.label: strategy 'l2rw' weights examples.*use one of \["),
        ({"heads.label.strategy": "best"}, r"Unknown config.heads.label.strategy 'best'; known: \["),
        ({"heads.box.weight": 0.0}, "heads.box.weight must be a finite number > 0; got 0.0"),
        ({"heads.box.validation_loss": "dice"}, "Unknown regression loss 'dice'"),
        ({"best_metric": "val_accuracy"}, r"best_metric='val_accuracy'.*\['val_score', 'val_loss', 'val_label/acc"),
        ({"data.canvas": 300}, r"config.data.canvas must be an integer in \[8, 256\]; got 300"),
        ({"data.name": "digits"}, r"config.heads \(\['box', 'label'\]\) is for datasets with several outputs"),
    ],
)
def test_bad_head_configs_fail_before_anything_is_touched(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        Trainer(_config(**overrides), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_a_dataset_with_outputs_needs_a_head_config_for_each():
    config = _config()
    del config.heads["box"]
    with pytest.raises(ValueError, match=r"outputs \['label', 'box'\]: config.heads needs exactly one entry each"):
        config_checks.validate_config(config)


# ---------------------------------------------------------------- trainer --


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("heads"))
    trainer = Trainer(_config(), workdir)
    return trainer, trainer.run(), workdir


def test_the_trainer_trains_a_decision_per_output_and_reports_each(finished):
    trainer, results, workdir = finished
    assert isinstance(trainer.loss, heads.HeadLosses) and trainer.loss.strategy == "slf"
    assert [h.names for h in trainer.loss.heads] == [["cross_entropy", "gce(q=0.7)"], ["mse", "giou"]]
    assert [h.validation_loss_spec for h in trainer.loss.heads] == ["cross_entropy", "iou"]
    assert set(results["test"]) == {"loss", "label/accuracy", "box/iou", "box/mae", "score"}
    assert 0 <= results["test"]["label/accuracy"] <= 1 and 0 <= results["test"]["box/iou"] <= 1
    assert results["best"]["metric"] == "val_score"
    assert set(results["decision"]) == {"label/cross_entropy", "label/gce(q=0.7)", "box/mse", "box/giou"}
    for choice in results["decision"].values():  # the last epoch's mean P(selected) of each candidate
        assert 0 <= choice["selection_probability"] <= 1 and np.isfinite(choice["weight"])
    for head in trainer.loss.heads:  # each output's decision network learned
        assert not np.allclose(head.decision_variables[0].numpy(), 0.0)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    keys = set().union(*rows)
    for key in ("train/label/accuracy", "train/box/iou", "eval/val_box/iou", "eval/val_score",
                "slf/selection_probability/label.cross_entropy", "slf/weight/box.giou", "slf/temperature"):  # fmt: skip
        assert key in keys, key
    assert json.load(open(os.path.join(workdir, "results.json")))["test"] == results["test"]


def test_the_exported_model_reloads_with_both_outputs(finished):
    trainer, _, workdir = finished
    x = trainer.data.x_test[:20]
    expected = trainer.model.predict(x, verbose=0)
    reloaded = keras.models.load_model(os.path.join(workdir, "export", "model.keras"))
    got = reloaded.predict(x, verbose=0)
    for output in ("label", "box"):
        np.testing.assert_allclose(got[output], expected[output], rtol=1e-6, atol=1e-6)


def test_a_resumed_run_continues_where_it_stopped(tmp_path):
    straight = Trainer(_config(**{"decision.restart_fraction": 0.0}), str(tmp_path / "straight"))
    straight.run()
    first = Trainer(_config(**{"decision.restart_fraction": 0.0, "num_train_steps": 10}), str(tmp_path / "resumed"))
    first.run()
    resumed = Trainer(_config(**{"decision.restart_fraction": 0.0}), str(tmp_path / "resumed"))
    resumed.run()
    assert resumed.step == 20
    for a, b in zip(straight.model.weights + straight.loss.decision_variables,
                    resumed.model.weights + resumed.loss.decision_variables, strict=True):  # fmt: skip
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)


def test_mirrored_on_two_cpus_matches_one_device(tmp_path):
    assert len(tf.config.list_logical_devices("CPU")) == 2  # set up in conftest.py
    single = Trainer(_config(), str(tmp_path / "single"))
    single_results = single.run()
    mirrored = Trainer(_config(distribution="mirrored"), str(tmp_path / "mirrored"))
    mirrored_results = mirrored.run()
    for key in ("label/accuracy", "box/iou", "loss"):
        np.testing.assert_allclose(mirrored_results["test"][key], single_results["test"][key], rtol=1e-4, atol=1e-5)
    for a, b in zip(single.loss.decision_variables, mirrored.loss.decision_variables, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5)


def test_an_output_may_keep_a_fixed_loss_while_the_other_learns(tmp_path):
    trainer = Trainer(_config(**{"heads.box.strategy": "fixed", "heads.box.fixed": "giou"}), str(tmp_path / "w"))
    results = trainer.run()
    assert trainer.loss.strategy == "label: slf, box: fixed" == results["strategy"]
    assert results["decision"]["box/giou"]["weight"] == pytest.approx(1.0)
    assert results["decision"]["box/mse"]["weight"] == pytest.approx(0.0)
    assert trainer.loss.heads[0].decision_variables and not trainer.loss.heads[1].decision_variables
