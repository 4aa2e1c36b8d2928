"""Tests of the Keras layers GumbelSoftmax and BinaryGate: behaviour and .keras round trip."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import slf_tf
from slf_tf import schedules

X = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)


def _model(inference="probabilities", hard=False):
    inputs = keras.Input((6,))
    logits = keras.layers.Dense(5, name="logits")(inputs)
    sample = slf_tf.GumbelSoftmax(
        temperature=schedules.ExponentialAnneal(2.0, 0.1, 0.5), hard=hard, inference=inference, seed=3
    )(logits)
    counts = keras.layers.Lambda(lambda y: 3.0 * y)(sample)
    gate = slf_tf.BinaryGate(threshold=0.5, clip=2.0)(counts)
    return keras.Model(inputs, [sample, gate])


@pytest.mark.parametrize("inference", ["probabilities", "argmax"])
def test_save_load_round_trip(tmp_path, inference):
    model = _model(inference)
    before = model.predict(X, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=False)
    after = reloaded.predict(X, verbose=0)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    layer = next(x for x in reloaded.layers if isinstance(x, slf_tf.GumbelSoftmax))
    assert layer.schedule == schedules.ExponentialAnneal(2.0, 0.1, 0.5)
    assert layer.inference == inference


def test_inference_is_deterministic_and_training_samples():
    layer = slf_tf.GumbelSoftmax(temperature=1.0, seed=1)
    logits = tf.constant(X[:, :5])
    a, b = layer(logits, training=False), layer(logits, training=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, tf.nn.softmax(logits), rtol=1e-6)
    s1, s2 = layer(logits, training=True), layer(logits, training=True)
    assert not np.allclose(s1, s2)  # the seed generator advances
    assert int(layer.iterations.numpy()) == 2
    # an explicit stateless seed reproduces
    np.testing.assert_array_equal(layer(logits, training=True, seed=(1, 2)), layer(logits, training=True, seed=(1, 2)))


def test_argmax_inference_and_hard_training():
    layer = slf_tf.GumbelSoftmax(hard=True, inference="argmax", seed=0)
    logits = tf.constant(X[:, :5])
    out = layer(logits, training=False).numpy()
    np.testing.assert_array_equal(out.argmax(-1), X[:, :5].argmax(-1))
    train = layer(logits, training=True).numpy()
    assert set(np.unique(train)) == {0.0, 1.0} and np.all(train.sum(-1) == 1)


def test_layer_trains_inside_fit():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), slf_tf.GumbelSoftmax(0.5, seed=2)])
    model.compile("adam", "mse")
    history = model.fit(X, np.eye(4)[np.arange(16) % 4], epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_binary_gate_layer():
    gate = slf_tf.BinaryGate(threshold=1.0)
    s = tf.constant([0.2, 1.0, 2.5])
    with tf.GradientTape() as tape:
        tape.watch(s)
        a = gate(s)
        y = tf.reduce_sum(a * [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(a, [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(tape.gradient(y, s), [1.0, 2.0, 3.0])
    assert slf_tf.BinaryGate.from_config(gate.get_config()).threshold == 1.0


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="inference must be one of"):
        slf_tf.GumbelSoftmax(inference="mode")
    with pytest.raises(ValueError, match="temperature must be a finite number > 0; got 0"):
        slf_tf.GumbelSoftmax(temperature=0)
    with pytest.raises(ValueError, match="clip must be None or a number > 0"):
        slf_tf.BinaryGate(clip=0.0)


def test_layer_hands_back_its_tfp_distribution():
    layer = slf_tf.GumbelSoftmax(temperature=0.7)
    logits = tf.constant([[0.5, -0.2, 1.0]])
    dist = layer.distribution(logits)
    assert isinstance(dist, tfp.distributions.RelaxedOneHotCategorical)
    np.testing.assert_allclose(float(dist.temperature), 0.7, rtol=1e-6)
    sample = layer(logits, training=True, seed=(1, 2))
    assert np.isfinite(float(dist.log_prob(sample)[0]))  # the layer's samples lie in the distribution's support
