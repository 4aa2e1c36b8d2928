"""Outputs with positions (sequences, dense predictions): Keras' reduction, masks, the step and the hypergradient."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import slf_tf
from slf_tf import metrics, train_step
from slf_tf.losses import LossBag

BAG = ["cross_entropy", "focal(gamma=2.0)", "label_smoothing(epsilon=0.1)", "gce(q=0.7)"]
B, T, C, VOCAB = 6, 5, 4, 9


def _tokens(seed=0, batch=B):
    """Token ids with trailing padding (0) of different lengths, and labels of every position."""
    r = np.random.default_rng(seed)
    x = r.integers(1, VOCAB, size=(batch, T))
    lengths = r.integers(1, T + 1, size=batch)
    lengths[0] = T
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0
    return x, r.integers(0, C, size=(batch, T))


def _token_model(dtype="float32", recurrent=False):
    keras.utils.set_random_seed(0)  # weight init only
    layers = [keras.Input((T,), dtype="int32"), keras.layers.Embedding(VOCAB, 8, mask_zero=True, dtype=dtype)]
    if recurrent:
        layers.append(keras.layers.GRU(8, return_sequences=True, dtype=dtype))
    layers += [keras.layers.Dense(6, activation="tanh", dtype=dtype), keras.layers.Dense(C, dtype=dtype)]
    return keras.Sequential(layers)


@pytest.mark.parametrize("strategy", ["slf", "fixed"])
@pytest.mark.parametrize("weights", [None, "example", "position"])
def test_single_candidate_equals_keras_sparse_cross_entropy_on_a_masked_batch(strategy, weights):
    x, y = _tokens()
    pred = _token_model()(x)
    assert pred._keras_mask is not None
    sample_weight = {
        None: None,
        "example": np.linspace(0.5, 2.0, B).astype(np.float32),
        "position": np.random.default_rng(1).uniform(0, 2, (B, T)).astype(np.float32),
    }[weights]
    loss = slf_tf.create_loss(strategy, ["cross_entropy"], k=1)
    # Keras cannot broadcast [batch] weights against a [batch, T] mask; ours takes both forms.
    keras_weight = np.broadcast_to(sample_weight[:, None], (B, T)) if weights == "example" else sample_weight
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, pred, sample_weight=keras_weight)
    np.testing.assert_allclose(float(loss(y, pred, sample_weight=sample_weight)), float(expected), rtol=1e-5)


def test_one_hot_labels_and_unmasked_outputs_match_keras():
    x, y = _tokens()
    pred = tf.random.stateless_normal([B, T, C], [1, 2])  # no mask: every position counts
    one_hot = tf.one_hot(y, C)
    loss = slf_tf.FixedLoss(["cross_entropy", "mae"])
    expected = keras.losses.CategoricalCrossentropy(from_logits=True)(one_hot, pred)
    np.testing.assert_allclose(float(loss(one_hot, pred)), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(loss(y[..., None], pred)), float(expected), rtol=1e-5)


def test_per_example_loss_is_its_share_of_the_masked_mean():
    """l_j = sum over j's valid positions / the batch's mean number of valid positions (docs/design.md)."""
    x, y = _tokens()
    pred = _token_model()(x)
    bag = LossBag(BAG)
    per_example = bag(y, pred).numpy()
    per_position = np.stack([c.per_position(y, pred).numpy() for c in bag.candidates], axis=-1)
    mask = (x != 0).astype(np.float64)
    expected = (per_position * mask[..., None]).sum(axis=1) / (mask.sum() / B)
    np.testing.assert_allclose(per_example, expected, rtol=1e-5)
    np.testing.assert_allclose(per_example.mean(axis=0), expected.sum(axis=0) / B, rtol=1e-5)


def test_regression_and_binary_positions_match_keras():
    r = np.random.default_rng(0)
    pred, target = r.normal(size=(B, T, 3)).astype(np.float32), r.normal(size=(B, T, 3)).astype(np.float32)
    mse = slf_tf.FixedLoss(["mse", "mae"], task="regression")
    np.testing.assert_allclose(float(mse(target, pred)), float(keras.losses.MeanSquaredError()(target, pred)), 1e-5)
    logits, labels = r.normal(size=(B, 7, 7, 1)).astype(np.float32), r.integers(0, 2, (B, 7, 7, 1)).astype(np.float32)
    bce = slf_tf.FixedLoss(["bce", "focal_bce"], task="binary")
    expected = keras.losses.BinaryCrossentropy(from_logits=True)(labels, logits)
    np.testing.assert_allclose(float(bce(labels, logits)), float(expected), rtol=1e-5)


def test_a_plain_batch_gives_the_same_numbers_as_before():
    """[batch, C] outputs: the per-example losses are the candidates' values, weighted by sample_weight."""
    r = np.random.default_rng(0)
    pred, y, w = r.normal(size=(8, C)).astype(np.float32), r.integers(0, C, 8), r.uniform(0, 1, 8).astype(np.float32)
    bag = LossBag(BAG)
    unweighted = np.stack([c.per_position(y, pred).numpy() for c in bag.candidates], axis=-1)
    np.testing.assert_allclose(bag(y, pred, sample_weight=w).numpy(), unweighted * w[:, None], rtol=1e-6)
    loss = slf_tf.FixedLoss(BAG)
    np.testing.assert_allclose(float(loss(y, pred, sample_weight=w)), (unweighted[:, 0] * w).mean(), rtol=1e-6)


def test_bad_shapes_name_the_shape_and_what_is_allowed():
    pred = tf.zeros([B, T, C])
    with pytest.raises(ValueError, match=r"integer labels \[batch, 5\] or \[batch, 5, 1\], or one-hot \[batch, 5, 4\]"):
        LossBag(BAG)(np.zeros([B, T + 1]), pred)
    with pytest.raises(ValueError, match=r"one per position, shape \[6, 5\]"):
        LossBag(BAG)(np.zeros([B, T]), pred, sample_weight=np.ones([B, T + 2]))
    with pytest.raises(ValueError, match=r"mask must mark the positions of y_pred"):
        LossBag(BAG)(np.zeros([B, T]), pred, mask=tf.ones([B, T, C], tf.bool))
    with pytest.raises(ValueError, match=r"regression y_true shape \(6, 4\) does not match"):
        LossBag(["mse"], task="regression")(np.zeros([B, 4]), tf.zeros([B, T, 4]))


def test_token_accuracy_matches_keras_masked_accuracy():
    x, y = _tokens()
    pred = _token_model()(x)
    sums = metrics.task_sums("classification", y, pred)
    metric = keras.metrics.SparseCategoricalAccuracy()
    metric.update_state(y, pred)
    np.testing.assert_allclose(float(sums["accuracy"]) / B, float(metric.result()), rtol=1e-6)


def test_the_steps_objective_is_keras_loss_with_mask_and_position_weights():
    x, y = _tokens()
    model = _token_model(recurrent=True)
    w = np.random.default_rng(2).uniform(0, 2, (B, T)).astype(np.float32)
    loss = slf_tf.FixedLoss(BAG)
    weights = [v.value for v in model.trainable_variables]
    forward = train_step.make_forward(model, loss, x, y, B, tf.ones([len(BAG)]), w)(weights, tf.one_hot(0, len(BAG)))
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x), sample_weight=w)
    np.testing.assert_allclose(float(forward.objective), float(expected), rtol=1e-5)
    assert forward.per_example.shape == (B, len(BAG))


def _central_difference(f, x0, h=1e-5):
    grad = np.zeros_like(x0)
    for i in range(len(x0)):
        e = np.zeros_like(x0)
        e[i] = h
        grad[i] = (f(x0 + e) - f(x0 - e)) / (2 * h)
    return grad


def test_hypergradient_of_a_masked_sequence_model_matches_brute_force():
    """dJ/dc by every method against J(c) = L_val(w - eta grad sum_i c_i L_i), the losses reduced by hand."""
    eta = 0.05
    model = _token_model("float64")
    (x, y), (xv, yv) = _tokens(0), _tokens(1, batch=4)
    loss = slf_tf.StochasticLoss(BAG, k=2)
    w0, nt = [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]

    def masked_mean(candidate, labels, pred, tokens):  # Keras' masked mean, written out
        mask = tf.cast(tokens != 0, tf.float64)
        return tf.reduce_sum(candidate.per_position(labels, pred) * mask) / tf.reduce_sum(mask)

    def j_of(c):
        with tf.GradientTape() as tape:
            tape.watch(w0)
            pred, _ = model.stateless_call(w0, nt, x, training=True)
            total = sum(c[i] * masked_mean(cand, y, pred, x) for i, cand in enumerate(loss.bag.candidates))
        g = [tf.convert_to_tensor(a) for a in tape.gradient(total, w0)]  # the embedding's IndexedSlices
        pred_val, _ = model.stateless_call([a - eta * b for a, b in zip(w0, g, strict=True)], nt, xv)
        return float(masked_mean(loss.validation_loss, yv, pred_val, xv))

    c0 = np.array([0.4, 0.1, 0.3, 0.2])
    brute = _central_difference(j_of, c0)
    for method in ("exact", "jvp", "finite_difference"):
        look = train_step.coefficient_gradient(
            model, loss, x, y, xv, yv, tf.constant(c0), lookahead_lr=eta, method=method, fd_epsilon=1e-4
        )
        assert float(look.val_loss) == pytest.approx(j_of(c0), rel=1e-9)
        err = np.max(np.abs(look.coefficient_gradient.numpy() - brute)) / np.max(np.abs(brute))
        assert err <= (1e-3 if method == "finite_difference" else 1e-4), (method, look.coefficient_gradient, brute)


def test_slf_model_trains_a_padded_token_model_with_position_weights():
    (x, y), (xv, yv) = _tokens(0, batch=64), _tokens(1, batch=32)
    y = x % C  # learnable: the label is a function of the token
    yv = xv % C
    w = (x != 0).astype(np.float32)
    model = slf_tf.SLFModel(_token_model(recurrent=True), validation_data=(xv, yv), val_batch_size=16)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=slf_tf.StochasticLoss(BAG, k=2, seed=0),
                  metrics=["accuracy"])  # fmt: skip
    history = model.fit(x, y, sample_weight=w, batch_size=16, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
    assert history.history["accuracy"][-1] > 0.6
    assert int(model.loss.step.numpy()) == 24
    compiled = model.network
    compiled.compile(loss=slf_tf.FixedLoss(BAG))  # the plain Keras path on the same masked outputs
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(yv, compiled(xv))
    np.testing.assert_allclose(compiled.evaluate(xv, yv, batch_size=32, verbose=0), float(expected), rtol=1e-5)


def test_plain_compile_and_fit_of_a_token_model_with_the_decision_callback():
    (x, _), (xv, yv) = _tokens(0, batch=32), _tokens(1, batch=16)
    model = _token_model(recurrent=True)
    loss = slf_tf.StochasticLoss(BAG, k=2, seed=0)
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    update = slf_tf.callbacks.DecisionUpdate((x, x % C), (xv, yv))
    history = model.fit(x, x % C, sample_weight=(x != 0).astype(np.float32), batch_size=8, epochs=2, verbose=0,
                        callbacks=[update])  # fmt: skip
    assert np.all(np.isfinite(history.history["loss"]))
    assert int(loss.step.numpy()) == 8


def test_a_masked_token_model_under_mirrored_matches_one_device():
    """The mask scaling is per replica, as Keras' is: equal lengths per replica half make the two agree."""
    from slf_tf.training import factories

    (x, _), (xv, _) = _tokens(0, batch=32), _tokens(1, batch=16)
    for tokens in (x, xv):  # the same number of valid positions in every example
        tokens[:, :3] = np.maximum(tokens[:, :3], 1)
        tokens[:, 3:] = 0
    strategy = factories.create_distribution_strategy("mirrored")
    runs = []
    for s in (tf.distribute.get_strategy(), strategy):
        with s.scope():
            model = slf_tf.SLFModel(_token_model(), (xv, xv % C), keras.optimizers.Adam(0.05), val_batch_size=8)
            model.compile(optimizer=keras.optimizers.Adam(0.01), loss=slf_tf.StochasticLoss(BAG, k=2, seed=0))
        history = model.fit(x, x % C, batch_size=8, epochs=2, shuffle=False, verbose=0).history
        runs.append((history["loss"], [np.asarray(v) for v in model.slf_loss.decision_variables]))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-4)
    for a, b in zip(runs[0][1], runs[1][1], strict=True):  # float32 sums in another order; entries near 0
        np.testing.assert_allclose(b, a, rtol=5e-4, atol=1e-3 * np.max(np.abs(a)))
