"""The paper's other task families as experiments: translation (sequences) and localisation (two heads)."""

import json
import os

import numpy as np

from configs import localisation as localisation_config
from configs import translation as translation_config
from slf_tf import data
from slf_tf.experiments import fair_fit, localisation, translation


def test_number_words_in_both_languages():
    assert translation.english(3421) == "three thousand four hundred twenty one".split()
    assert translation.german(3421) == "drei tausend vier hundert ein und zwanzig".split()
    assert translation.german(1101) == "ein tausend ein hundert eins".split()
    assert translation.english(15) == ["fifteen"] and translation.german(15) == ["fuenfzehn"]
    assert translation.german(70) == ["siebzig"] and translation.english(7000) == ["seven", "thousand"]
    longest = max(range(1, 10_000), key=lambda n: len(translation.german(n)))
    assert len(translation.german(longest)) + 1 == translation.TARGET_LENGTH
    assert max(len(translation.english(n)) for n in range(1, 10_000)) == translation.SOURCE_LENGTH


def test_token_noise_rate_spares_eos_and_padding():
    _, target = translation.encode(np.arange(1, 2001))
    noisy = translation.corrupt(target, 0.3, np.random.default_rng(0))
    words = target > translation.EOS
    changed = noisy != target
    assert not np.any(changed & ~words)
    # A replaced word is redrawn uniformly, so 1/len(vocab words) of them keep their value.
    expected = 0.3 * (1 - 1 / (len(translation.TARGET_WORDS) - 3))
    assert abs(changed[words].mean() - expected) < 0.02
    decoder_in = translation.teacher_inputs(target)
    np.testing.assert_array_equal(decoder_in > 0, target > 0)  # the same mask on inputs and references
    assert np.all(decoder_in[:, 0] == translation.BOS)


def test_pasted_digits_sit_in_their_boxes_and_noise_moves_the_boxes():
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 17, size=(20, 64)).astype(np.float32)
    images, boxes = data.paste(digits, 32, rng)
    for image, box in zip(images, boxes, strict=True):
        x0, y0, x1, y1 = np.round(box * 32).astype(int)
        outside = image.copy()
        outside[y0:y1, x0:x1] = 0
        assert np.all(outside == 0) and 8 <= x1 - x0 <= 20 and x1 - x0 == y1 - y0
    noisy = data.noisy_boxes(boxes, 0.05, 0.2, rng)
    assert np.all(noisy[:, :2] <= noisy[:, 2:] + 0.3) and not np.allclose(noisy, boxes)
    np.testing.assert_allclose(localisation.box_iou(boxes, boxes), 1.0, atol=1e-5)  # eps in the union


def test_translation_runs_end_to_end(tmp_path):
    summary = translation.run(translation_config.get_test_config(), str(tmp_path))
    assert set(summary["metrics"]) == {"exact_match", "token_accuracy"}
    with open(os.path.join(tmp_path, "results.json")) as f:
        runs = json.load(f)["runs"]
    variants = {"slf[trust_region=False]", "slf[virtual_step=sgd]"}  # the full lookahead; the SGD step
    assert set(runs) == {"fixed:cross_entropy", "fixed:gce(q=0.7)", "slf", *variants}
    assert set(summary["variants"]) == variants
    assert all(0 <= r["0"]["test"]["token_accuracy"] <= 1 for r in runs.values())
    assert os.path.exists(os.path.join(tmp_path, "translation.md"))
    assert os.listdir(os.path.join(tmp_path, "tensorboard", "seed0"))


def test_localisation_runs_end_to_end(tmp_path):
    summary = localisation.run(localisation_config.get_test_config(), str(tmp_path))
    assert set(summary["metrics"]) == {"accuracy", "mean_iou"}
    with open(os.path.join(tmp_path, "results.json")) as f:
        runs = json.load(f)["runs"]
    assert len(runs) == 7 and set(runs["slf"]["0"]["coefficients"]) == {"class", "box"}
    for variant in ("slf[trust_region=False]", "slf[virtual_step=sgd]"):
        assert set(runs[variant]["0"]["coefficients"]) == {"class", "box"}


def test_the_sweep_is_picked_on_validation_not_test():
    results = {
        "fixed:a": {"0": {"val": 0.9, "test": {"m": 0.5}, "seconds": 1.0}},
        "fixed:b": {"0": {"val": 0.8, "test": {"m": 0.9}, "seconds": 1.0}},
        "slf": {"0": {"val": 0.85, "test": {"m": 0.7}, "seconds": 1.0}},
    }
    summary = fair_fit.summarise(results, ["m"], "fixed:a")
    assert summary["picks"] == {"0": "fixed:a"}
    m = summary["metrics"]["m"]
    assert (m["sweep"], m["oracle"], m["slf"], m["slf_minus_sweep"]) == (0.5, 0.9, 0.7, [0.7 - 0.5])
    assert summary["slf_cost_over_sweep"] == 0.5
    assert "| m | 50.00 | 50.00 | 90.00 | 70.00 | +20.00 (+20.0) |" in fair_fit.table(summary, "t")
