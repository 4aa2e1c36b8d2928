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
        assert any(t.startswith("slf/") for t in tags[f"runs/digits_clean/K{k}_seed0/tensorboard/decision"]), tags


def test_categorical_vae_elbo_improves(tmp_path):
    config = vae_config.get_test_config()
    config.estimators = ("gumbel_softmax", "score_function")
    result = categorical_vae.run(config, str(tmp_path))
    saved = json.load(open(tmp_path / "results.json"))
    curves = saved["curves"]
    assert os.path.exists(tmp_path / "categorical_vae.png")
    for name, curve in curves.items():
        values = [v for _, v in curve]
        assert np.all(np.isfinite(values)) and values[-1] < values[0], (name, values)
    assert set(result) == {"gumbel_softmax", "score_function"}
    tags = _tensorboard_tags(tmp_path / "tensorboard")
    for name in result:
        assert {"test/neg_elbo", "train/neg_elbo", "train/tau", "test/iw_bound"} <= tags[name], tags
        # The 8-sample bound is tighter than the one-draw -ELBO (up to the noise of 360 test images).
        assert saved["test_iw_bound"][name] < saved["test_neg_elbo"][name] + 1.0, saved


def test_importance_weighted_bound_matches_enumeration():
    """Tiny VAE (2 latents x 3 classes = 9 codes): -log p(x) and -ELBO by enumeration vs the m-sample bound."""
    import itertools

    import keras

    config = vae_config.get_test_config()
    config.latents, config.classes, config.hidden = 2, 3, (16,)
    keras.utils.set_random_seed(0)
    vae = categorical_vae._VAE(config, dim=6)
    x = tf.constant(np.random.default_rng(0).integers(0, 2, size=(4, 6)), tf.float32)
    log_q = tf.nn.log_softmax(vae.logits(x)).numpy()  # [B, 2, 3]
    neg_log_px, neg_elbo = [], []
    for b in range(4):
        log_joint, q = [], []
        for code in itertools.product(range(3), repeat=2):
            recon, _ = vae.terms(x[b : b + 1], tf.one_hot([code], 3), tf.zeros([1, 2, 3]))
            log_joint.append(float(recon[0]) - 2 * np.log(3))  # log p(x|z) + log p(z), uniform prior
            q.append(log_q[b, 0, code[0]] + log_q[b, 1, code[1]])
        log_joint, q = np.array(log_joint), np.array(q)
        neg_log_px.append(-np.logaddexp.reduce(log_joint))
        neg_elbo.append(np.sum(np.exp(q) * (q - log_joint)))
    one = np.stack([categorical_vae.importance_weighted_bound(vae, x, 1, (1, s)).numpy() for s in range(500)])
    many = categorical_vae.importance_weighted_bound(vae, x, 4000, (2, 0), chunk=1000).numpy()
    # m = 1 is a one-draw -ELBO: unbiased for the enumerated -ELBO (5 standard errors).
    assert np.all(np.abs(one.mean(0) - neg_elbo) < 5 * one.std(0) / np.sqrt(len(one)) + 1e-4), (one.mean(0), neg_elbo)
    # Large m: the bound tightens onto -log p(x) from above, and below the -ELBO.
    np.testing.assert_allclose(many, neg_log_px, atol=0.02)
    assert np.all(np.array(neg_elbo) > np.array(neg_log_px))


def test_vae_rejects_unknown_estimator(tmp_path):
    c = vae_config.get_test_config()
    c.estimators = ("muprop",)
    with pytest.raises(ValueError, match=r"Unknown VAE estimators \['muprop'\]"):
        categorical_vae.run(c, str(tmp_path))
