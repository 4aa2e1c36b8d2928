"""Tests of StochasticLoss and the other strategies: selection, masking, serialisation, Keras fit."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import slf_tf
from slf_tf import losses, rng, selection

BAG = ["cross_entropy", "focal(gamma=2.0)", "mae", "squared_hinge", "gce(q=0.7)"]
R = np.random.default_rng(0)
Y = R.integers(0, 4, 32)
LOGITS = R.normal(size=(32, 4)).astype(np.float32)


@losses.register("explodes_on_class_3", "classification")
def _explodes(t):
    """Infinite whenever a label is 3: a candidate that is non-finite on some batches."""
    return -tf.reduce_sum(t.y * t.log_p, -1) + tf.math.log(1.0 - t.y[:, 3])


@pytest.mark.parametrize("estimator", ["relaxed", "straight_through", "ils", "reinforce"])
def test_k1_selects_exactly_one_loss_per_step(estimator):
    loss = slf_tf.StochasticLoss(BAG, k=1, temperature=2.0, estimator=estimator)
    for step in range(200):
        sel = loss.sample(rng.step_seed(0, step))
        assert float(tf.reduce_sum(sel.gate)) == 1.0, step
        np.testing.assert_allclose(float(tf.reduce_sum(sel.coefficients)), 1.0, rtol=1e-6)


@pytest.mark.parametrize("k", [2, 3])
def test_k_draws_select_between_one_and_k_with_hard_draws(k):
    loss = slf_tf.StochasticLoss(BAG, k=k, estimator="straight_through")
    sizes = [float(tf.reduce_sum(loss.sample(rng.step_seed(1, s)).gate)) for s in range(100)]
    assert min(sizes) >= 1 and max(sizes) <= k and len(set(sizes)) > 1


def test_selection_frequency_matches_inclusion_probability():
    loss = slf_tf.StochasticLoss(BAG, k=2, estimator="straight_through")
    loss.decision_network.alpha.assign([1.0, 0.0, -1.0, 0.5, 0.0])
    n = 3000

    @tf.function
    def draw_gates():
        out = tf.TensorArray(tf.float32, size=n)
        for s in tf.range(n):
            out = out.write(s, loss.sample(rng.step_seed(2, s)).gate)
        return out.stack()

    gates = draw_gates().numpy()
    p = loss.selection_probabilities().numpy()
    assert np.all(np.abs(gates.mean(0) - p) <= 4.5 * np.sqrt(p * (1 - p) / n)), (gates.mean(0), p)


def _sampling(loss):
    """A loss called directly, as in a custom loop: sampling on (Keras' fit turns it on through the callback)."""
    loss.sampling.assign(True)
    return loss


def test_k_inf_is_softmax_weighting():
    loss = _sampling(slf_tf.StochasticLoss(BAG, k="inf"))
    assert loss.strategy == "softmax"
    beta = np.array([0.5, -1.0, 0.0, 2.0, 0.3], np.float32)
    loss.decision_network.beta.assign(beta)
    w = tf.nn.softmax(beta).numpy()
    value = loss(Y, LOGITS)
    candidates = losses.LossBag(BAG)(Y, LOGITS).numpy().mean(0)
    np.testing.assert_allclose(float(value), candidates @ w, rtol=1e-5)
    np.testing.assert_allclose(loss.last_coefficients.numpy(), w, rtol=1e-5)
    np.testing.assert_array_equal(loss.last_gate.numpy(), np.ones(5))


def test_value_is_coefficient_weighted_sum_and_state_is_recorded():
    loss = _sampling(slf_tf.StochasticLoss(BAG, k=2, seed=3))
    value = float(loss(Y, LOGITS))
    c = loss.last_coefficients.numpy()
    np.testing.assert_allclose(value, loss.last_losses.numpy() @ c, rtol=1e-5)
    np.testing.assert_allclose(c.sum(), 1.0, rtol=1e-6)
    assert int(loss.step.numpy()) == 1
    np.testing.assert_array_equal(loss.times_selected.numpy(), loss.last_gate.numpy())


def test_same_seed_same_step_same_selection():
    a, b = _sampling(slf_tf.StochasticLoss(BAG, seed=5)), _sampling(slf_tf.StochasticLoss(BAG, seed=5))
    for _ in range(3):
        a(Y, LOGITS)
        b(Y, LOGITS)
        np.testing.assert_array_equal(a.last_coefficients.numpy(), b.last_coefficients.numpy())


def test_evaluation_mode_uses_expected_coefficients_and_changes_nothing():
    loss = slf_tf.StochasticLoss(BAG, k=2)
    loss.decision_network.alpha.assign([2.0, 0.0, 0.0, 0.0, -2.0])
    assert not bool(loss.sampling.numpy())  # the default: a called loss does not sample
    state = [v.numpy().copy() for v in loss.state_variables]
    v1, v2 = float(loss(Y, LOGITS)), float(loss(Y, LOGITS))
    assert v1 == v2  # no noise
    for before, variable in zip(state, loss.state_variables, strict=True):
        np.testing.assert_array_equal(variable.numpy(), before)  # no state change
    c = selection.expected_coefficients(*loss.logits(), k=2).numpy()
    np.testing.assert_allclose(v1, losses.LossBag(BAG)(Y, LOGITS).numpy().mean(0) @ c, rtol=1e-5)


def test_non_finite_candidate_is_masked_and_counted():
    loss = _sampling(slf_tf.StochasticLoss(["cross_entropy", "explodes_on_class_3", "mae"], k="inf"))
    y = np.array([0, 1, 3, 2])
    logits = tf.constant(LOGITS[:4])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = loss(y, logits)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(tape.gradient(value, logits).numpy()))
    np.testing.assert_allclose(loss.last_coefficients.numpy(), [0.5, 0.0, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(loss.masked_counts.numpy(), [0, 1, 0])
    loss(np.array([0, 1, 2, 2]), logits)  # a batch without class 3: nothing masked
    np.testing.assert_array_equal(loss.masked_counts.numpy(), [0, 1, 0])
    assert int(loss.skipped_steps.numpy()) == 0


def test_all_candidates_non_finite_skips_the_step():
    loss = _sampling(slf_tf.UniformLoss(["explodes_on_class_3"]))
    value = loss(np.array([3, 3]), LOGITS[:2])
    assert float(value) == 0.0 and int(loss.skipped_steps.numpy()) == 1


def test_normalisation_divides_by_running_scale():
    loss = _sampling(slf_tf.UniformLoss(["cross_entropy", "mae"], normalize=True))
    loss(Y, LOGITS)  # first step sets the scale to |L_i|
    raw = losses.LossBag(["cross_entropy", "mae"])(Y, LOGITS).numpy().mean(0)
    np.testing.assert_allclose(loss.loss_scale.numpy(), raw, rtol=1e-5)
    np.testing.assert_allclose(float(loss(Y, LOGITS)), np.mean(raw / raw), rtol=1e-4)


@pytest.mark.parametrize("strategy", sorted(slf_tf.stochastic_loss.STRATEGIES))
def test_every_strategy_drops_in(strategy):
    # glc corrects cross-entropy: its bag is fixed, and forward's noise matrix needs the number of classes
    bag, classes = (["cross_entropy", "forward"], LOGITS.shape[-1]) if strategy == "glc" else (BAG, 0)
    loss = _sampling(slf_tf.create_loss(strategy, bag, k=2, temperature=0.5, seed=1, loss="mae", num_classes=classes))
    value = loss(Y, LOGITS)
    assert np.isfinite(float(value))
    c = loss.last_coefficients.numpy()
    assert np.all(c >= 0) and c.sum() > 0
    if strategy == "fixed":
        np.testing.assert_array_equal(c, [0, 0, 1, 0, 0])
    if strategy == "uniform":
        np.testing.assert_allclose(c, 0.2)
    if strategy == "glc":  # cross-entropy until the noise matrix is estimated
        np.testing.assert_array_equal(c, [1, 0])
    clone = type(loss).from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()


def test_uncertainty_objective_and_softadapt_slopes():
    unc = slf_tf.UncertaintyLoss(["cross_entropy", "mae"])
    outcome = types.SimpleNamespace(candidate_losses=tf.constant([2.0, 0.5]))
    with tf.GradientTape() as tape:
        obj = unc.decision_loss(unc.sample(None), outcome)
    # d/ds [exp(-s) L / 2 + s / 2] at s = 0 is (1 - L) / 2
    np.testing.assert_allclose(tape.gradient(obj, unc.decision_variables[0].value), [-0.5, 0.25])
    soft = slf_tf.SoftAdaptLoss(["cross_entropy", "mae"], beta=10.0)
    soft.running.assign([1.0, 1.0, 0.0, 0.0, 0.0, 1.0])  # loss scale [1, 1]
    soft.previous_scale.assign([2.0, 1.0])  # cross-entropy is falling, mae is flat
    c = soft.sample(None).coefficients.numpy()
    assert c[1] > c[0]  # the candidate that stopped improving gets more weight
    np.testing.assert_allclose(c.sum(), 1.0, rtol=1e-6)


def test_traces_once_in_a_tf_function():
    loss = _sampling(slf_tf.StochasticLoss(BAG, k=3))

    @tf.function
    def f(y, logits):
        return loss(y, logits)

    for _ in range(5):
        f(tf.constant(Y), tf.constant(LOGITS))
    assert f.experimental_get_tracing_count() == 1
    assert int(loss.step.numpy()) == 5


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: slf_tf.StochasticLoss(BAG, k=0), r'k must be an integer >= 1 or "inf"; got 0'),
        (lambda: slf_tf.StochasticLoss(BAG, k=2.5), "k must be an integer"),
        (
            lambda: slf_tf.StochasticLoss(BAG, temperature=0.0),
            "temperature must be a finite number > 0; got 0.0",
        ),
        (lambda: slf_tf.StochasticLoss(BAG, temperature=-1), "got -1"),
        (lambda: slf_tf.StochasticLoss([]), "The bag of losses is empty"),
        (lambda: slf_tf.StochasticLoss(["mae", "mae"]), "Duplicate losses"),
        (lambda: slf_tf.StochasticLoss(["nope"]), "Unknown classification loss 'nope'"),
        (lambda: slf_tf.StochasticLoss(["focal(gamma=-1)"]), "must be >= 0; got -1.0"),
        (
            lambda: slf_tf.StochasticLoss(BAG, estimator="gumbel"),
            r"Unknown selection estimator 'gumbel'; known: \[",
        ),
        (
            lambda: slf_tf.StochasticLoss(BAG, weighting="some"),
            r"Unknown weighting 'some'; known: \['selected'",
        ),
        (lambda: slf_tf.StochasticLoss(BAG, decision_network="rnn"), r"Unknown decision network kind 'rnn'; known"),
        (lambda: slf_tf.create_loss("slf", BAG, decision="state"), r"Unknown loss arguments \['decision'\]"),
        (lambda: slf_tf.create_loss("best", BAG), r"Unknown loss strategy 'best'; known: \['fixed'"),
        (lambda: slf_tf.FixedLoss(BAG, loss="mse"), "The fixed loss 'mse' is not in the bag"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_label_prediction_mismatch_raises():
    with pytest.raises(ValueError, match="batch sizes differ"):
        slf_tf.StochasticLoss(BAG)(Y[:5], LOGITS)


def _digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int32)


def test_compile_fit_with_decision_update_saves_and_reloads(tmp_path):
    x, y = _digits()
    keras.utils.set_random_seed(0)
    loss = slf_tf.StochasticLoss(["cross_entropy", "focal(gamma=2.0)", "mae", "squared_hinge"], k=2, seed=0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, metrics=["accuracy"])
    before = loss.selection_probabilities().numpy()
    update = slf_tf.callbacks.DecisionUpdate(
        (x[:1000], y[:1000]),
        (x[1000:1300], y[1000:1300]),
        every_n_batches=2,
        method="finite_difference",
    )
    history = model.fit(
        x[:1000],
        y[:1000],
        batch_size=50,
        epochs=4,
        callbacks=[update],
        verbose=0,
        validation_data=(x[1300:], y[1300:]),
    )
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["val_accuracy"][-1] > 0.8
    after = loss.selection_probabilities().numpy()
    assert np.max(np.abs(after - before)) > 0.01, (before, after)
    assert int(loss.step.numpy()) == 80 and len(update.history) == 40
    assert not bool(loss.sampling.numpy())  # off again after fit: evaluate() does not sample
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(x[1300:], verbose=0), model.predict(x[1300:], verbose=0), rtol=1e-6)
    assert isinstance(reloaded.loss, slf_tf.StochasticLoss) and reloaded.loss.names == loss.names


@pytest.mark.parametrize("kind", ["static", "state"])
def test_a_decision_step_at_the_default_rate_moves_no_logit_further_than_a_free_one(kind):
    """Adam moves each weight by about its rate; a state logit sums hidden_units + 1 of them (saturated
    activations here), so the strategy's default rate is divided by that: one step moves it <= 0.02."""
    loss = slf_tf.StochasticLoss(BAG, decision_network=kind, hidden_units=32)
    optimizer = keras.optimizers.Adam(loss.decision_learning_rate)
    features = tf.fill([len(BAG) + 2], 5.0)  # tanh(5 x ...) saturates: |activations| near 1
    before = loss.decision_network(features)[0].numpy()
    with tf.GradientTape() as tape:
        alpha, _ = loss.decision_network(features)
        objective = tf.reduce_sum(alpha)  # every logit pushed one way: the largest move of one step
    variables = loss.decision_variables
    optimizer.apply_gradients(zip(tape.gradient(objective, variables), variables, strict=True))
    moved = np.abs(loss.decision_network(features)[0].numpy() - before)
    assert np.all(moved <= 0.02 * 1.001) and np.all(moved >= 0.02 * 0.5), moved
    assert loss.decision_learning_rate == pytest.approx(0.02 if kind == "static" else 0.02 / 33)
