"""The seed experiments: each test config runs end to end in seconds, writes its figure, and moves
in the right direction (asserted with margin, not tuned numbers)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from configs import categorical_vae as vae_config
from configs import gumbel_gan as gan_config
from configs import ils_toy as ils_config
from configs import k_sweep as k_config
from slf_tf.experiments import categorical_vae, gumbel_gan, ils_toy, k_sweep


def _tensorboard_tags(root) -> dict[str, set[str]]:
    """{run directory relative to root: the summary tags written there}."""
    tags: dict[str, set[str]] = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.startswith("events.out.tfevents"):
                run = os.path.relpath(dirpath, root)
                for event in tf.compat.v1.train.summary_iterator(os.path.join(dirpath, f)):
                    tags.setdefault(run, set()).update(v.tag for v in event.summary.value)
    return tags


def test_gumbel_gan_tv_falls(tmp_path):
    result = gumbel_gan.run(gan_config.get_test_config(), str(tmp_path))
    assert os.path.exists(tmp_path / "gumbel_gan.png")
    assert result["tv"][-1] < 0.5 * result["tv"][0], result["tv"]
    assert abs(sum(result["final_distribution"]) - 1.0) < 1e-4
    assert json.load(open(tmp_path / "results.json"))["final_tv"] == result["final_tv"]
    tags = _tensorboard_tags(tmp_path / "tensorboard")["."]
    assert {"gan/total_variation", "gan/tau", "gan/loss_generator", "generator/p_4"} <= tags, tags


def test_gumbel_gan_rejects_bad_target(tmp_path):
    c = gan_config.get_test_config()
    c.target = (0.5, 0.6)
    with pytest.raises(ValueError, match="target must be a probability vector"):
        gumbel_gan.run(c, str(tmp_path))


def test_ils_toy_kl_falls_for_reference_ils_and_gumbel_softmax(tmp_path):
    result = ils_toy.run(ils_config.get_test_config(), str(tmp_path))
    assert os.path.exists(tmp_path / "ils_toy.png") and os.path.exists(tmp_path / "ils_toy.md")
    initial, final = result["initial_kl"], result["final_kl"]
    assert len(final) == 11
    tags = _tensorboard_tags(tmp_path / "tensorboard")
    assert tags["ils_reference_c=0.1"] == {"true_kl"} and "ils_toy/table" in tags["."], tags
    # Measured at 1,000 steps: reference ILS 0.35 -> ~0.01, Gumbel-Softmax tau=0.1 0.35 -> 0.19.
    for label, ratio in (
        ("ils[reference] c=0.1", 0.5),
        ("ils[reference] c=0.01", 0.5),
        ("gumbel_softmax tau=0.1", 0.75),
    ):
        assert final[label] < ratio * initial[label], (label, initial[label], final[label])


def test_k_sweep_runs_and_plots(tmp_path):
    result = k_sweep.run(k_config.get_test_config(), str(tmp_path))
    assert os.path.exists(tmp_path / "k_sweep.png") and os.path.exists(tmp_path / "k_sweep.md")
    accs = result["results"]["digits_clean"]
    assert set(accs) == {"1", "inf"} and all(0 <= a[0] <= 100 for a in accs.values())
    tags = _tensorboard_tags(tmp_path)
    assert "k_sweep/table" in tags["tensorboard"]
    for k in ("1", "inf"):  # each run keeps the trainer's own summaries, decision network included
        assert any(t.startswith("slf/") for t in tags[f"runs/digits_clean/K{k}_seed0/tensorboard"]), tags


def test_categorical_vae_elbo_improves(tmp_path):
    config = vae_config.get_test_config()
    config.estimators = ("gumbel_softmax", "score_function")
    result = categorical_vae.run(config, str(tmp_path))
    curves = json.load(open(tmp_path / "results.json"))["curves"]
    assert os.path.exists(tmp_path / "categorical_vae.png")
    for name, curve in curves.items():
        values = [v for _, v in curve]
        assert np.all(np.isfinite(values)) and values[-1] < values[0], (name, values)
    assert set(result) == {"gumbel_softmax", "score_function"}
    tags = _tensorboard_tags(tmp_path / "tensorboard")
    for name in result:
        assert {"test/neg_elbo", "train/neg_elbo", "train/tau"} <= tags[name], tags


def test_vae_rejects_unknown_estimator(tmp_path):
    c = vae_config.get_test_config()
    c.estimators = ("muprop",)
    with pytest.raises(ValueError, match=r"Unknown VAE estimators \['muprop'\]"):
        categorical_vae.run(c, str(tmp_path))
