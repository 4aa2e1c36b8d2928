"""The `forward` candidate and its noise matrix, estimated on the clean split at the restart (GLC)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import slf_tf
from configs import test as test_config
from slf_tf import losses, transition
from slf_tf.training import Trainer


def _pair_matrix(classes: int, rate: float) -> np.ndarray:
    """Pair-flip noise: class i becomes i + 1 with probability ``rate``."""
    return (1 - rate) * np.eye(classes) + rate * np.roll(np.eye(classes), 1, axis=1)


def test_estimate_averages_each_clean_class_and_keeps_identity_for_absent_ones():
    probabilities = np.array([[0.6, 0.4, 0.0], [0.8, 0.2, 0.0], [0.1, 0.7, 0.2]])
    T = transition.estimate(probabilities, np.array([0, 0, 1]), 3)
    np.testing.assert_allclose(T, [[0.7, 0.3, 0.0], [0.1, 0.7, 0.2], [0.0, 0.0, 1.0]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"probabilities must be \[n, 3\] for 2 labels"):
        transition.estimate(probabilities, np.array([0, 1]), 3)
    with pytest.raises(ValueError, match=r"Row 1 of the noise matrix is not a distribution"):
        transition.check([[1.0, 0.0], [0.5, 0.6]], 2)
    with pytest.raises(ValueError, match=r"must be \[2, 2\]; got shape \(3, 3\)"):
        transition.check(np.eye(3), 2)


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_at():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20_000, 5)) * 4
    for true in (0.5, 2.5):
        p = tf.nn.softmax(logits / true).numpy()
        labels = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)  # one draw from each row
        assert transition.fit_temperature(logits, labels) == pytest.approx(true, rel=0.06)
    with pytest.raises(ValueError, match=r"logits must be \[n, C\] for 3 labels"):
        transition.fit_temperature(logits[:2], np.array([0, 1, 2]))


def test_from_network_averages_the_softmax_recalibrated_to_the_noisy_labels():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(4, 3)).astype(np.float32) * 3
    network = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, use_bias=False)])
    network.set_weights([kernel])
    x_noisy = rng.normal(size=(12_000, 4)).astype(np.float32)
    p = tf.nn.softmax(x_noisy @ kernel / 2.0).numpy()
    y_noisy = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)  # drawn at temperature 2
    x, y = rng.normal(size=(300, 4)).astype(np.float32), rng.integers(0, 3, 300)
    T, calibration = transition.from_network(network, x, y, 3, noisy=(x_noisy, y_noisy), max_noisy=6_000)
    assert calibration.temperature == pytest.approx(2.0, rel=0.08)
    logits = x @ kernel
    np.testing.assert_allclose(T, transition.estimate(tf.nn.softmax(calibration(logits)).numpy(), y, 3), rtol=1e-5)
    # The labels follow the tempered softmax, so the matrix stays near the identity: T is the temperature-2 one.
    np.testing.assert_allclose(T, transition.estimate(tf.nn.softmax(logits / 2.0).numpy(), y, 3), atol=0.02)
    plain, none = transition.from_network(network, x, keras.utils.to_categorical(y, 3), 3)
    assert none == transition.Calibration.identity(3) and none.describe() == "not recalibrated"
    np.testing.assert_allclose(plain, transition.estimate(tf.nn.softmax(logits).numpy(), y, 3), rtol=1e-5)
    probabilities = keras.Sequential([network, keras.layers.Softmax()])  # read through the logarithm
    T_p, _ = transition.from_network(probabilities, x, y, 3, from_logits=False, noisy=(x_noisy, y_noisy))
    np.testing.assert_allclose(T_p, T, atol=0.01)


def test_matrix_scaling_finds_the_flip_a_temperature_cannot():
    # A network that has learned the clean classes (no sign of the pair) and labels flipped i -> i + 1 at 40%.
    rng = np.random.default_rng(0)
    classes, n = 10, 6_000
    clean = rng.integers(0, classes, n)
    logits = 5 * np.eye(classes)[clean] + rng.normal(size=(n, classes))
    noisy = np.where(rng.random(n) < 0.4, (clean + 1) % classes, clean)
    x_val, y_val = logits[:1_000], clean[:1_000]
    flip = np.roll(np.eye(classes), 1, axis=1).astype(bool)
    other = ~flip & ~np.eye(classes, dtype=bool)

    calibration = transition.calibrate(logits[1_000:], noisy[1_000:])
    T = transition.estimate(tf.nn.softmax(calibration(x_val)).numpy(), y_val, classes)
    tau = transition.fit_temperature(logits[1_000:], noisy[1_000:])
    T_tau = transition.estimate(tf.nn.softmax(x_val / tau).numpy(), y_val, classes)
    assert T[flip].mean() > 0.2 and T[flip].mean() > 4 * T[other].mean(), (T[flip].mean(), T[other].mean())
    assert T_tau[flip].mean() < 1.5 * T_tau[other].mean()  # the temperature spreads mass evenly
    truth = 0.6 * np.eye(classes) + 0.4 * flip
    assert np.abs(T - truth).sum() < 0.4 * np.abs(T_tau - truth).sum()  # 2.2 against 8.0


def test_forward_is_cross_entropy_under_identity_and_the_noisy_likelihood_under_pair_flip():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(16, 4)).astype(np.float32) * 2, rng.integers(0, 4, 16)
    bag = losses.LossBag(["cross_entropy", "forward"])
    values = bag(labels, logits, transition=np.eye(4, dtype=np.float32)).numpy()
    np.testing.assert_allclose(values[:, 1], values[:, 0], rtol=1e-5)
    T = _pair_matrix(4, 0.3).astype(np.float32)
    p = tf.nn.softmax(logits).numpy()
    expected = -np.log(0.7 * p[np.arange(16), labels] + 0.3 * p[np.arange(16), (labels - 1) % 4])
    np.testing.assert_allclose(bag(labels, logits, transition=T).numpy()[:, 1], expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"'forward' candidate needs its noise matrix"):
        losses.get("forward")(labels, logits)


def test_forward_gradients_are_finite_at_saturated_outputs():
    logits = tf.constant([[60.0, -60.0, 0.0], [-60.0, 60.0, 0.0], [0.1, 0.2, 0.3]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = losses.LossBag(["forward"])(np.array([0, 0, 2]), logits, transition=np.eye(3, dtype=np.float32))
    assert np.all(np.isfinite(value.numpy())) and np.all(np.isfinite(tape.gradient(value, logits).numpy()))


def test_a_combined_loss_holds_the_matrix_validates_it_and_saves_it():
    with pytest.raises(ValueError, match=r"'forward' candidate needs num_classes \(an int >= 2"):
        slf_tf.StochasticLoss(["cross_entropy", "forward"])
    with pytest.raises(ValueError, match=r"'forward' cannot be the fixed loss"):
        slf_tf.create_loss("fixed", ["forward", "cross_entropy"], loss="forward", num_classes=3)
    loss = slf_tf.StochasticLoss(["cross_entropy", "forward"], num_classes=3)
    np.testing.assert_array_equal(loss.transition.numpy(), np.eye(3))
    with pytest.raises(ValueError, match=r"Row 0 of the noise matrix"):
        loss.set_transition([[2.0, -1.0, 0.0], [0, 1, 0], [0, 0, 1]])
    loss.set_transition(_pair_matrix(3, 0.25))
    again = slf_tf.StochasticLoss.from_config(loss.get_config())
    np.testing.assert_allclose(again.transition.numpy(), _pair_matrix(3, 0.25), rtol=1e-6)
    assert slf_tf.StochasticLoss(["cross_entropy", "mae"], num_classes=3).transition is None  # no forward: no matrix


def _pair_noise_config(**overrides):
    config = test_config.get_config()
    config.data.label_noise, config.data.noise_kind = 0.3, "pair"
    config.loss.candidates = ("cross_entropy", "mae", "forward")
    config.num_train_steps, config.eval_every_steps = 50, 25
    config.decision.restart_min_epochs = 0.0
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def test_the_trainer_estimates_the_matrix_at_the_restart_and_keeps_it_on_resume(tmp_path, monkeypatch):
    fitted_on = []
    fit = transition.calibrate
    monkeypatch.setattr(transition, "calibrate", lambda z, labels: fitted_on.append(labels) or fit(z, labels))
    config = _pair_noise_config()
    trainer = Trainer(config, str(tmp_path))
    trainer.run()
    assert len(fitted_on) == 1, "the calibration is fitted once, at the restart point"
    np.testing.assert_array_equal(fitted_on[0], trainer.data.y_train)  # to the noisy training labels
    T = trainer.loss.transition.numpy()
    assert not np.allclose(T, np.eye(T.shape[0])), "not estimated at the restart"
    np.testing.assert_allclose(T.sum(axis=1), 1.0, rtol=1e-5)
    resumed = Trainer(config, str(tmp_path))  # a finished run reloads its checkpoint
    resumed.run()
    np.testing.assert_allclose(resumed.loss.transition.numpy(), T, rtol=1e-6)


def test_the_trainer_estimates_the_matrix_also_when_the_restart_is_skipped(tmp_path):
    trainer = Trainer(_pair_noise_config(**{"decision.restart_min_epochs": 1e6}), str(tmp_path))
    results = trainer.run()
    assert results["restarted_at"] == -2
    assert not np.allclose(trainer.loss.transition.numpy(), np.eye(trainer.data.num_classes))


@pytest.mark.parametrize("strategy", ["uniform", "fixed"])
def test_a_strategy_that_never_restarts_gets_the_estimate_at_the_restart_point(tmp_path, strategy):
    trainer = Trainer(_pair_noise_config(**{"loss.strategy": strategy}), str(tmp_path))
    results = trainer.run()
    assert results["restarted_at"] == -1  # no restart
    assert not np.allclose(trainer.loss.transition.numpy(), np.eye(trainer.data.num_classes))


def test_glc_estimates_without_recalibration_as_published(monkeypatch):
    fitted = []
    monkeypatch.setattr(transition, "calibrate", lambda z, labels: fitted.append(1))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 5)).astype(np.float32), rng.integers(0, 3, 64)
    network = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    model = slf_tf.SLFModel(network, validation_data=(x[:32], y[:32]), val_batch_size=16)
    model.compile(optimizer="adam", loss=slf_tf.create_loss("glc", ["cross_entropy", "forward"], num_classes=3))
    restart = slf_tf.callbacks.Restart(0.4, min_epochs=0)
    model.fit(x, y, batch_size=16, epochs=5, verbose=0, callbacks=[restart])
    assert restart.restarted_at == 8 and restart.calibration == transition.Calibration.identity(3) and not fitted


def test_the_trainer_refuses_forward_without_a_restart(tmp_path):
    with pytest.raises(ValueError, match=r"estimated at the restart point, which this run lacks"):
        Trainer(_pair_noise_config(**{"decision.restart_fraction": 0.0}), str(tmp_path))


@pytest.mark.parametrize("min_epochs", [0.0, 100.0])
def test_the_restart_callback_estimates_the_matrix_restarting_or_not(min_epochs):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 5)).astype(np.float32), rng.integers(0, 3, 64)
    xv, yv = rng.normal(size=(32, 5)).astype(np.float32), rng.integers(0, 3, 32)
    network = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    model = slf_tf.SLFModel(network, validation_data=(xv, yv), val_batch_size=16)
    loss = slf_tf.create_loss("slf", ["cross_entropy", "forward"], k=1, num_classes=3)
    model.compile(optimizer="adam", loss=loss)
    restart = slf_tf.callbacks.Restart(0.4, min_epochs=min_epochs)
    if min_epochs:
        with pytest.warns(UserWarning, match=r"Restart skipped"):
            model.fit(x, y, batch_size=16, epochs=5, verbose=0, callbacks=[restart])
    else:
        model.fit(x, y, batch_size=16, epochs=5, verbose=0, callbacks=[restart])
    assert restart.restarted_at == (-2 if min_epochs else 8)
    identity = transition.Calibration.identity(3)
    assert restart.calibration != identity, "SLFModel.fit(x, y) gives the callback its arrays to fit it to"
    T = loss.transition.numpy()
    assert not np.allclose(T, np.eye(3)), "not estimated at the restart point"
    np.testing.assert_allclose(T.sum(axis=1), 1.0, rtol=1e-5)


def test_the_restart_callback_fitting_on_a_dataset_recalibrates_only_with_the_arrays_it_is_given():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 5)).astype(np.float32), rng.integers(0, 3, 64)
    xv, yv = rng.normal(size=(32, 5)).astype(np.float32), rng.integers(0, 3, 32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    for given, expected_one in ((None, True), ((x, y), False)):
        network = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
        model = slf_tf.SLFModel(network, validation_data=(xv, yv), val_batch_size=16)
        model.compile(
            optimizer="adam", loss=slf_tf.create_loss("slf", ["cross_entropy", "forward"], k=1, num_classes=3)
        )
        restart = slf_tf.callbacks.Restart(0.4, min_epochs=0, train_data=given)
        model.fit(dataset, epochs=5, verbose=0, callbacks=[restart])
        assert (restart.calibration == transition.Calibration.identity(3)) == expected_one
    with pytest.raises(ValueError, match=r"Restart train_data must be an \(x, y\) tuple of arrays; got list"):
        slf_tf.callbacks.Restart(train_data=[x, y])


def _mirrored():
    config = _pair_noise_config()
    config.distribution = "mirrored"
    return config


def test_the_estimate_and_the_forgetting_reach_every_replica_under_mirrored_strategy(tmp_path, monkeypatch):
    forgotten, forget = [], slf_tf.decision.DecisionNetwork.forget

    def spy(network, index, optimizer=None):
        forget(network, index, optimizer)
        forgotten.append([v.numpy()[index] for v in network.alpha.value._values])  # noqa: SLF001 (each replica)

    monkeypatch.setattr(slf_tf.decision.DecisionNetwork, "forget", spy)
    trainer = Trainer(_mirrored(), str(tmp_path))
    assert trainer.strategy.num_replicas_in_sync == 2
    trainer.run()
    copies = [v.numpy() for v in trainer.loss.transition.value._values]  # noqa: SLF001 (each replica's copy)
    assert not np.allclose(copies[0], np.eye(copies[0].shape[0]))
    np.testing.assert_array_equal(copies[0], copies[1])
    assert forgotten == [[0.0, 0.0]]


def test_glc_is_cross_entropy_until_the_estimate_then_forward():
    with pytest.raises(ValueError, match=r"glc needs 'cross_entropy' and 'forward' in its bag"):
        slf_tf.create_loss("glc", ["mae", "forward"], num_classes=3)
    loss = slf_tf.create_loss("glc", ["cross_entropy", "forward"], num_classes=3)
    np.testing.assert_array_equal(loss.selection_probabilities().numpy(), [1.0, 0.0])
    loss.set_transition(_pair_matrix(3, 0.2))
    np.testing.assert_array_equal(loss.selection_probabilities().numpy(), [0.0, 1.0])
    again = slf_tf.create_loss("glc", ["cross_entropy", "forward"], num_classes=3)
    again.load_state(loss.get_config()["state"])  # a resumed or reloaded run stays corrected
    np.testing.assert_array_equal(again.selection_probabilities().numpy(), [0.0, 1.0])


def test_the_trainer_runs_glc_through_its_restart(tmp_path, monkeypatch):
    fitted = []
    monkeypatch.setattr(transition, "calibrate", lambda z, labels: fitted.append(1))
    config = _pair_noise_config(**{"loss.strategy": "glc", "loss.candidates": ("cross_entropy", "forward")})
    trainer = Trainer(config, str(tmp_path))
    results = trainer.run()
    assert not fitted, "glc estimates without recalibration, as published"
    assert results["restarted_at"] == 20  # 40% of 50 steps
    assert results["decision"]["forward"]["selection_probability"] == 1.0
    assert not np.allclose(trainer.loss.transition.numpy(), np.eye(trainer.data.num_classes))


def test_several_outputs_refuse_forward():
    heads = {
        "a": slf_tf.StochasticLoss(["cross_entropy", "forward"], num_classes=3),
        "b": slf_tf.StochasticLoss(["cross_entropy", "mae"]),
    }
    with pytest.raises(ValueError, match=r"Outputs \['a'\] have the 'forward' candidate"):
        slf_tf.HeadLosses(heads)


# ------------------------------------------------ forgetting what `forward` was --


@pytest.mark.parametrize("kind", ["static", "state"])
def test_forget_returns_one_candidates_logits_and_moments_to_zero(kind):
    network = slf_tf.decision.create_decision_network(kind, 4, hidden_units=5, name=f"forget_{kind}")
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.build(network.trainable_variables)
    rng = np.random.default_rng(0)
    for variable in [*network.trainable_variables, *optimizer.variables[2:]]:  # past iterations, learning rate
        variable.assign(rng.normal(size=variable.shape).astype(np.float32) ** 2 + 0.1)
    features = tf.constant(rng.normal(size=[slf_tf.decision.feature_size(4)]), tf.float32)
    before = [t.numpy() for t in network(features)]
    hidden = [v.numpy() for v in getattr(network, "hidden", network).weights] if kind == "state" else []
    slots = {v.name: v.numpy() for v in optimizer.variables[2:]}

    network.forget(2, optimizer)

    for old, new in zip(before, network(features), strict=True):  # alpha, then beta
        assert new.numpy()[2] == 0.0
        np.testing.assert_allclose(np.delete(new.numpy(), 2), np.delete(old, 2), rtol=1e-6)
    for old, new in zip(hidden, network.hidden.weights if kind == "state" else [], strict=True):
        np.testing.assert_array_equal(new.numpy(), old)  # the shared hidden layer is kept
    columns = [2] if kind == "static" else [2, 6]  # the head's outputs are alpha then beta
    changed = 0
    for variable in optimizer.variables[2:]:
        value, old = variable.numpy(), slots[variable.name]
        if np.array_equal(value, old):
            continue
        changed += 1
        expected = old.copy()
        expected[..., columns] = 0.0  # exactly the candidate's entries, every one of them
        np.testing.assert_array_equal(value, expected)
    assert changed == 4, "Adam's two moments of the two variables holding the candidate's logits"
    with pytest.raises(ValueError, match=r"forget: index must be an int in \[0, 4\); got 4"):
        network.forget(4)


def _spy_on_forget(monkeypatch) -> list:
    """Records each ``DecisionNetwork.forget``: the index, the optimizer, and the logits before and after."""
    calls, forget = [], slf_tf.decision.DecisionNetwork.forget

    def spy(network, index, optimizer=None):
        before = network.alpha.numpy().copy()
        forget(network, index, optimizer)
        calls.append((index, optimizer, before, network.alpha.numpy().copy(), network.beta.numpy().copy()))

    monkeypatch.setattr(slf_tf.decision.DecisionNetwork, "forget", spy)
    return calls


@pytest.mark.parametrize("strategy", ["slf", "joint"])
def test_the_trainer_forgets_what_the_decision_learned_of_forward_at_the_estimate(tmp_path, monkeypatch, strategy):
    calls = _spy_on_forget(monkeypatch)
    trainer = Trainer(_pair_noise_config(**{"loss.strategy": strategy}), str(tmp_path))
    trainer.run()
    assert len(calls) == 1, "once, at the estimate"
    index, optimizer, before, alpha, beta = calls[0]
    assert index == 2 and optimizer is trainer.decision_optimizer  # ("cross_entropy", "mae", "forward")
    assert before[2] != 0.0, "the decision had learned something of forward (as cross-entropy) by then"
    assert alpha[2] == 0.0 and beta[2] == 0.0 and np.array_equal(alpha[:2], before[:2])


def test_the_restart_callback_forgets_what_the_decision_learned_of_forward(monkeypatch):
    calls = _spy_on_forget(monkeypatch)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 5)).astype(np.float32), rng.integers(0, 3, 64)
    network = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    model = slf_tf.SLFModel(network, validation_data=(x[:32], y[:32]), val_batch_size=16)
    model.compile(optimizer="adam", loss=slf_tf.create_loss("slf", ["cross_entropy", "forward"], k=1, num_classes=3))
    model.fit(x, y, batch_size=16, epochs=5, verbose=0, callbacks=[slf_tf.callbacks.Restart(0.4, min_epochs=0)])
    assert len(calls) == 1 and calls[0][0] == 1 and calls[0][1] is model.decision_optimizer
    assert calls[0][2][1] != 0.0 and calls[0][3][1] == 0.0


def test_losses_without_decision_logits_have_nothing_to_forget():
    glc = slf_tf.create_loss("glc", ["cross_entropy", "forward"], num_classes=3)
    assert glc.forget_candidate("forward") is False
    with pytest.raises(ValueError, match=r"forget_candidate: 'gce' is not in this loss's bag"):
        glc.forget_candidate("gce")
