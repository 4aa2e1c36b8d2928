"""Property-based bad-input tests: every call either works (finite output) or raises a ValueError
naming the bad value; nothing else escapes (no TypeError, no NaN, no crash)."""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import slf_tf
from configs import test as test_config
from slf_tf.training import config_checks, factories

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = slf_tf.losses.known("classification")

temperatures = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-3, 3),
    st.sampled_from([0.0, -0.0, 1e-30, 1e30]),
)
ks = st.one_of(st.integers(-5, 12), st.floats(allow_nan=True, width=16), st.sampled_from(["inf", "3", None, True]))


def _valid_temperature(t):
    return isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0


def _valid_k(k, allow_inf):
    infinite = k == "inf" or (isinstance(k, float) and k == math.inf)  # K = inf: softmax weighting
    return (isinstance(k, int) and not isinstance(k, bool) and k >= 1) or (allow_inf and infinite)


@SETTINGS
@given(temperature=temperatures, k=ks, hard=st.booleans(), dtype=st.sampled_from(["float16", "float32", "int32"]))
def test_sampler_arguments(temperature, k, hard, dtype):
    logits = tf.constant(np.linspace(-3, 3, 12).reshape(3, 4), dtype=dtype)
    expect_ok = _valid_temperature(temperature) and _valid_k(k, False) and dtype != "int32"
    if expect_ok:
        s = slf_tf.multi_gumbel_softmax(logits, k, temperature, hard=hard, seed=0)
        assert np.all(np.isfinite(tf.cast(s, tf.float32).numpy()))
        np.testing.assert_allclose(tf.cast(s, tf.float32).numpy().sum(-1), k, rtol=1e-2)
    else:
        with pytest.raises(ValueError, match=r"temperature|k must|floating point"):
            slf_tf.multi_gumbel_softmax(logits, k, temperature, hard=hard, seed=0)


@SETTINGS
@given(
    bag=st.lists(st.sampled_from([*NAMES, "nope", "focal(gamma=-1)", "gce(q=2)", "focal(gamma=0.5)"]), max_size=5),
    k=ks,
    temperature=temperatures,
    estimator=st.sampled_from(["relaxed", "straight_through", "reinforce", "ils", "gumbel"]),
    weighting=st.sampled_from(["selected", "all", "none", "some"]),
)
def test_stochastic_loss_arguments(bag, k, temperature, estimator, weighting):
    try:
        loss = slf_tf.StochasticLoss(bag, k=k, temperature=temperature, estimator=estimator, weighting=weighting)
    except ValueError as e:
        message = str(e)
        assert any(word in message for word in ("bag", "Duplicate", "Unknown", "must be", "got")), message
        return
    assert bag and len(set(bag)) == len(bag) and _valid_temperature(temperature) and _valid_k(k, True)
    for sampling in (False, True):
        loss.sampling.assign(sampling)
        value = loss(np.array([0, 1, 2]), np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
        assert np.isfinite(float(value))


@SETTINGS
@given(
    labels=st.sampled_from(["int_1d", "float_1d", "int_2d1", "one_hot", "wrong_width", "wrong_batch", "strings"]),
    preds=st.sampled_from(["ok", "nan", "int", "rank1", "inf"]),
)
def test_label_and_prediction_shapes(labels, preds):
    rng = np.random.default_rng(0)
    y = {
        "int_1d": np.array([0, 1, 2, 3]),
        "float_1d": np.array([0.0, 1.0, 2.0, 3.0]),
        "int_2d1": np.array([[0], [1], [2], [3]]),
        "one_hot": np.eye(4)[[0, 1, 2, 3]],
        "wrong_width": np.zeros([4, 3]),
        "wrong_batch": np.array([0, 1, 2]),
        "strings": np.array(["a", "b", "c", "d"]),
    }[labels]
    p = {
        "ok": rng.normal(size=(4, 4)).astype(np.float32),
        "nan": np.full([4, 4], np.nan, np.float32),
        "inf": np.full([4, 4], np.inf, np.float32),
        "int": np.zeros([4, 4], np.int32),
        "rank1": np.zeros([4], np.float32),
    }[preds]
    loss = slf_tf.UniformLoss(["cross_entropy", "mae"])
    loss.sampling.assign(True)  # called directly, as in a custom loop: record the step
    # Integer predictions are cast to float by keras.losses.Loss (LossBag alone rejects them: losses_test).
    bad_input = labels in ("wrong_width", "wrong_batch", "strings") or preds == "rank1"
    if bad_input:
        with pytest.raises(ValueError, match=r"y_true|y_pred|batch sizes differ"):
            loss(y, p)
        return
    value = float(loss(y, p))
    assert np.isfinite(value)  # non-finite candidates are masked, never propagated
    if preds in ("nan", "inf"):
        assert int(loss.skipped_steps.numpy()) == 1


@SETTINGS
@given(
    field=st.sampled_from(
        [
            ("num_train_steps", st.integers(-3, 0)),
            ("batch_size", st.integers(-3, 0)),
            ("distribution", st.text(min_size=1, max_size=8)),
            ("data.name", st.text(min_size=1, max_size=8)),
            ("model.name", st.text(min_size=1, max_size=8)),
            ("optimizer.name", st.text(min_size=1, max_size=8)),
            ("loss.strategy", st.text(min_size=1, max_size=8)),
            ("loss.k", st.integers(-3, 0)),
            ("loss.estimator", st.text(min_size=1, max_size=8)),
            ("loss.temperature.initial", st.floats(max_value=0.0)),
            ("decision.method", st.text(min_size=1, max_size=8)),
            ("decision.every", st.integers(-3, 0)),
            ("decision.lookahead_lr", st.floats(max_value=0.0)),
            ("decision.virtual_step", st.text(min_size=1, max_size=8)),
            ("decision.network", st.text(min_size=1, max_size=8)),
            ("best_metric", st.text(min_size=1, max_size=8)),
            ("early_stopping_patience", st.integers(-3, -1)),
        ]
    ),
    data=st.data(),
)
def test_bad_config_fields_raise_value_error(field, data):
    key, values = field
    value = data.draw(values)
    config = test_config.get_config()
    node = config
    *path, leaf = key.split(".")
    for p in path:
        node = node[p]
    known = {
        "distribution": factories.DISTRIBUTION_STRATEGIES,
        "data.name": ("digits", "breast_cancer", "wine", "diabetes", "mnist"),
        "model.name": ("mlp", "cnn", "resnet20"),
        "optimizer.name": factories.OPTIMIZERS,
        "loss.strategy": tuple(slf_tf.stochastic_loss.STRATEGIES),
        "loss.estimator": slf_tf.selection.ESTIMATORS,
        "decision.method": ("exact", "finite_difference"),
        "decision.virtual_step": ("sgd", "optimizer"),
        "decision.network": ("static", "state"),
        "best_metric": factories.BEST_METRICS,
    }
    if isinstance(value, str) and (value in known.get(key, ()) or value.startswith("tfds:")):
        return  # a valid name, not a bad input
    node[leaf] = value
    with pytest.raises(ValueError):
        config_checks.validate_config(config)
