"""Tests of slf_tf.selection: the K draws (on TFP), the gate, the weights, masking, expected coefficients."""

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
import tensorflow_probability as tfp

from slf_tf import estimators, rng, selection

ALPHA = tf.constant([0.8, -0.4, 0.3, 0.0, -1.0])
BETA = tf.constant([0.5, 0.0, -0.5, 1.0, 0.2])
P_FLOOR = 1e-3  # per-test false-failure rate of the statistical tests (fixed seeds: deterministic)


def _sample(estimator="relaxed", k=3, seed=0, weighting="selected", threshold=0.5, temperature=1.0):
    return selection.sample(
        selection.create_estimator(estimator),
        ALPHA,
        BETA,
        k=k,
        temperature=temperature,
        seed=seed,
        weighting=weighting,
        threshold=threshold,
    )


@pytest.mark.parametrize("estimator", ["relaxed", "straight_through", "reinforce", "ils"])
def test_draw_follows_the_same_distribution_as_the_toolkit_kernel(estimator):
    """The selection's TFP draws and the estimator's fast kernel agree in distribution (two-sample tests)."""
    est = selection.create_estimator(estimator)
    n = 20_000
    tfp_draws = est.draw(ALPHA, n, seed=(3, 1), temperature=0.7).numpy()
    ours = est.sample(tf.broadcast_to(ALPHA, [n, 5]), seed=(3, 2), temperature=0.7).numpy()
    if estimator == "relaxed":
        for i in range(5):  # marginals, Bonferroni-corrected
            assert scipy.stats.ks_2samp(tfp_draws[:, i], ours[:, i]).pvalue > P_FLOOR / 5, i
    else:  # one-hot: the category counts, a chi-square test of homogeneity
        table = np.stack([tfp_draws.sum(0), ours.sum(0)])
        assert scipy.stats.chi2_contingency(table).pvalue > P_FLOOR
        np.testing.assert_array_equal(tfp_draws.sum(-1), 1.0)


def test_categorical_log_prob_and_entropy_are_tfps():
    d = tf.one_hot([0, 3, 1], 5)
    logits = tf.broadcast_to(ALPHA, [3, 5])
    expected = tf.reduce_sum(d * tf.nn.log_softmax(logits), -1)
    np.testing.assert_allclose(estimators.categorical_log_prob(logits, d).numpy(), expected.numpy(), rtol=1e-6)
    p = tf.nn.softmax(ALPHA).numpy()
    entropy = tfp.distributions.OneHotCategorical(logits=ALPHA).entropy()
    np.testing.assert_allclose(float(entropy), -np.sum(p * np.log(p)), rtol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_gate_selects_between_one_and_k_and_keeps_the_top(k):
    for s in range(50):
        choice = _sample("straight_through", k=k, seed=s, threshold=0.5)
        size = float(tf.reduce_sum(choice.gate))
        assert 1 <= size <= k
        assert float(tf.gather(choice.gate, tf.argmax(choice.soft_counts))) == 1.0
    # A threshold no soft count can reach still selects the top entry.
    assert float(tf.reduce_sum(_sample(k=2, threshold=100.0).gate)) == 1.0


def test_weights_are_renormalised_over_the_selected_set():
    choice = _sample("straight_through", k=2, seed=7)
    a = choice.gate.numpy()
    e = np.exp(BETA.numpy()) * a
    np.testing.assert_allclose(choice.coefficients.numpy(), e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(choice.weights.numpy(), tf.nn.softmax(BETA).numpy(), rtol=1e-6)
    none = _sample("straight_through", k=2, seed=7, weighting="none")
    np.testing.assert_allclose(none.coefficients.numpy(), a / a.sum(), rtol=1e-6)
    every = _sample("straight_through", k=2, seed=7, weighting="all")
    np.testing.assert_allclose(every.coefficients.numpy(), a * tf.nn.softmax(BETA).numpy(), rtol=1e-6)


def test_k_inf_selects_everything_and_is_softmax_weighting():
    choice = _sample(k="inf")
    assert choice.draws is None
    np.testing.assert_array_equal(choice.gate.numpy(), np.ones(5))
    np.testing.assert_allclose(choice.coefficients.numpy(), tf.nn.softmax(BETA).numpy(), rtol=1e-6)
    expected = selection.expected_coefficients(ALPHA, BETA, k="inf")
    np.testing.assert_allclose(expected.numpy(), tf.nn.softmax(BETA).numpy(), rtol=1e-6)


def test_expected_coefficients_use_inclusion_probabilities():
    p = tf.nn.softmax(ALPHA).numpy()
    inclusion = 1 - (1 - p) ** 3
    e = np.exp(BETA.numpy()) * inclusion
    got = selection.expected_coefficients(ALPHA, BETA, k=3).numpy()
    np.testing.assert_allclose(got, e / e.sum(), rtol=1e-5)


def test_same_seed_same_selection_and_gradients_reach_alpha_and_beta():
    a, b = _sample(seed=rng.step_seed(0, 5)), _sample(seed=rng.step_seed(0, 5))
    np.testing.assert_array_equal(a.coefficients.numpy(), b.coefficients.numpy())
    alpha, beta = tf.Variable(ALPHA), tf.Variable(BETA)
    for estimator in ("relaxed", "straight_through", "ils"):
        with tf.GradientTape() as tape:
            choice = selection.sample(selection.create_estimator(estimator), alpha, beta, k=2, temperature=0.5, seed=1)
            cost = tf.reduce_sum(choice.coefficients * tf.range(5, dtype=tf.float32))
        g_alpha, g_beta = tape.gradient(cost, [alpha, beta])
        assert g_alpha is not None and np.any(g_alpha.numpy() != 0), estimator
        assert g_beta is not None and np.any(g_beta.numpy() != 0), estimator


def test_mask_keeps_the_total_and_falls_back():
    c = tf.constant([0.5, 0.0, 0.3, 0.2, 0.0])
    fallback = tf.constant([0.1, 0.4, 0.1, 0.2, 0.2])
    everything = tf.ones([5], tf.bool)
    np.testing.assert_array_equal(selection.mask(c, everything, fallback).numpy(), c.numpy())  # exactly
    one_bad = tf.constant([True, True, False, True, True])
    np.testing.assert_allclose(selection.mask(c, one_bad, fallback).numpy(), [5 / 7, 0, 0, 2 / 7, 0], rtol=1e-6)
    selected_bad = tf.constant([False, True, False, False, True])  # every selected candidate is non-finite
    np.testing.assert_allclose(selection.mask(c, selected_bad, fallback).numpy(), [0, 2 / 3, 0, 0, 1 / 3], rtol=1e-6)
    np.testing.assert_array_equal(selection.mask(c, tf.zeros([5], tf.bool), fallback).numpy(), np.zeros(5))
    with tf.GradientTape() as tape:
        tape.watch(c)
        out = selection.mask(c, one_bad, fallback)
    assert np.all(np.isfinite(tape.gradient(out, c, output_gradients=tf.ones(5)).numpy()))


def test_bad_options_name_the_allowed_ones():
    with pytest.raises(ValueError, match=r"Unknown selection estimator 'gumbel'; known: \['relaxed'"):
        selection.check_options(2, "gumbel", "selected")
    with pytest.raises(ValueError, match=r"Unknown weighting 'some'; known: \['selected', 'all', 'none'\]"):
        selection.check_options(2, "relaxed", "some")
    with pytest.raises(ValueError, match='k must be an integer >= 1 or "inf"'):
        selection.check_options(0, "relaxed", "selected")
