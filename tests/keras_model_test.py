"""Tests of SLFModel, the fused fit path: training, the decision update, evaluation purity, wiring errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import slf_tf

BAG = ["cross_entropy", "focal(gamma=2.0)", "mae", "squared_hinge"]


def _digits():
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 16.0).astype(np.float32), y[order].astype(np.int32)
    return (x[:800], y[:800]), (x[800:1100], y[800:1100]), (x[1100:], y[1100:])


def _network():
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])


def _model(every=1, **kwargs):
    _, val, _ = _digits()
    keras.utils.set_random_seed(0)
    model = slf_tf.SLFModel(_network(), val, val_batch_size=64, every=every, **kwargs)
    loss = slf_tf.StochasticLoss(BAG, k=2, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, metrics=["accuracy"])
    return model, loss


def test_fit_trains_both_networks():
    (x, y), _, (xt, yt) = _digits()
    model, loss = _model()
    before = loss.selection_probabilities().numpy()
    history = model.fit(x, y, batch_size=50, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["accuracy"][-1] > history.history["accuracy"][0]
    assert np.max(np.abs(loss.selection_probabilities().numpy() - before)) > 0.01
    assert int(loss.step.numpy()) == 48  # 16 batches x 3 epochs
    assert np.mean(np.argmax(model.predict(xt, verbose=0), -1) == yt) > 0.85


def test_evaluate_is_deterministic_and_changes_no_state():
    (x, y), _, (xt, yt) = _digits()
    model, loss = _model()
    model.fit(x, y, batch_size=50, epochs=1, verbose=0)
    state = [v.numpy().copy() for v in loss.state_variables + loss.decision_variables]
    results = [model.evaluate(xt, yt, verbose=0, return_dict=True) for _ in range(3)]
    assert results[0] == results[1] == results[2]
    for before, variable in zip(state, loss.state_variables + loss.decision_variables, strict=True):
        np.testing.assert_array_equal(variable.numpy(), before)


def test_every_two_steps_updates_the_decision_on_even_steps_only():
    (x, y), _, _ = _digits()
    model, loss = _model(every=2)
    alphas = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            alphas.append(loss.decision_network.alpha.numpy().copy())

    model.fit(x[:400], y[:400], batch_size=50, epochs=1, verbose=0, callbacks=[Watch()])
    moved = [not np.array_equal(a, b) for a, b in zip([np.zeros(4)] + alphas[:-1], alphas, strict=True)]
    assert moved == [True, False] * 4


def test_sample_weight_zero_examples_do_not_count():
    (x, y), _, _ = _digits()
    model, _ = _model()
    weights = np.ones(len(x), np.float32)
    weights[::2] = 0.0
    history = model.fit(x, y, sample_weight=weights, batch_size=50, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_wiring_errors_say_what_to_do():
    _, val, _ = _digits()
    unwired = slf_tf.SLFModel(_network())
    unwired.compile(loss=slf_tf.StochasticLoss(BAG))
    with pytest.raises(ValueError, match="has no validation_data"):
        unwired.fit(val[0], val[1], verbose=0)
    with pytest.raises(ValueError, match="SLFModel needs validation_data"):
        unwired.set_validation_data(None)
    with pytest.raises(ValueError, match=r"got \(x, y, sample_weight\)"):
        slf_tf.SLFModel(_network(), (val[0], val[1], np.ones(len(val[0]))))
    with pytest.raises(ValueError, match="needs a slf_tf combined loss"):
        slf_tf.SLFModel(_network(), val).compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"Unknown virtual_step 'adam'"):
        slf_tf.SLFModel(_network(), val, virtual_step="adam")


def test_the_optimizer_virtual_step_needs_an_optimizer_it_knows():
    (x, y), val, _ = _digits()
    model = slf_tf.SLFModel(_network(), val, val_batch_size=64)  # virtual_step="optimizer", the default
    model.compile(optimizer=keras.optimizers.Nadam(3e-3), loss=slf_tf.StochasticLoss(BAG, k=2, seed=0))
    with pytest.raises(ValueError, match=r"supports SGD, Adam, AdamW and RMSprop; got Nadam. Use virtual_step='sgd'"):
        model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    model = slf_tf.SLFModel(_network(), val, val_batch_size=64, virtual_step="sgd")
    model.compile(optimizer=keras.optimizers.Nadam(3e-3), loss=slf_tf.StochasticLoss(BAG, k=2, seed=0))
    assert np.isfinite(model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0).history["loss"][0])


def test_validation_data_from_a_batched_dataset():
    _, (xv, yv), _ = _digits()
    model = slf_tf.SLFModel(_network(), tf.data.Dataset.from_tensor_slices((xv, yv)).batch(32))
    np.testing.assert_array_equal(model._validation[1].numpy(), yv)


def test_config_round_trip_keeps_settings_not_data():
    model, _ = _model(every=3, lookahead_lr=0.1)
    clone = slf_tf.SLFModel.from_config(model.get_config())
    assert clone.settings == model.settings and clone.val_batch_size == 64
    assert clone._validation is None


def test_backup_and_restore_resumes_both_networks_and_the_loss_state(tmp_path):
    (x, y), _, _ = _digits()

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("preempted")

    model, loss = _model()
    with pytest.raises(RuntimeError, match="preempted"):
        model.fit(
            x[:256],
            y[:256],
            batch_size=64,
            epochs=4,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path)), Interrupt()],
        )
    saved = int(loss.step.numpy()), [v.numpy().copy() for v in loss.decision_variables]
    resumed, resumed_loss = _model()
    seen = {}

    class Peek(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.setdefault("step", int(resumed_loss.step.numpy()))
            seen.setdefault("decision", [v.numpy().copy() for v in resumed_loss.decision_variables])

    resumed.fit(
        x[:256],
        y[:256],
        batch_size=64,
        epochs=4,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path)), Peek()],
    )
    assert seen["step"] == saved[0] == 8  # two epochs of 4 batches: the schedule and the seeds go on
    for a, b in zip(seen["decision"], saved[1], strict=True):
        np.testing.assert_array_equal(a, b)


class _RestartProbe(keras.callbacks.Callback):
    """Records the network, the optimizer's step count and the decision right after step 4."""

    def __init__(self, seen):
        super().__init__()
        self.seen, self.step = seen, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.step += 1
        if self.step == 5:  # right after the restart at step 4 (8 steps: 2 epochs of 4)
            self.seen["weights"] = [np.array(w) for w in self.model.network.get_weights()]
            self.seen["iterations"] = int(self.model.optimizer.iterations.numpy())
            self.seen["decision"] = [np.asarray(v) for v in self.model.slf_loss.decision_variables]


def test_restart_callback_restarts_the_network_and_keeps_the_decision():
    import slf_tf.callbacks

    r = np.random.default_rng(0)
    x, y, xv, yv = r.normal(size=(64, 5)), r.integers(0, 3, 64), r.normal(size=(32, 5)), r.integers(0, 3, 32)
    runs = {}
    for strategy in ("slf", "fixed"):
        keras.utils.set_random_seed(0)
        network = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
        model = slf_tf.SLFModel(network, validation_data=(xv, yv), val_batch_size=16)
        model.compile(optimizer="adam", loss=slf_tf.create_loss(strategy, ["cross_entropy", "mae"], k=1))
        restart = slf_tf.callbacks.Restart(0.5, seed=3, min_epochs=1)
        seen = {}
        probe = _RestartProbe(seen)
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[restart, probe])
        runs[strategy] = (restart.restarted_at, seen, network)
    at, seen, network = runs["slf"]
    assert at == 4 and seen["iterations"] == 0
    keras.utils.set_random_seed(4)  # the callback's seed + 1
    fresh = keras.models.clone_model(network)
    for got, want in zip(seen["weights"], fresh.get_weights(), strict=True):
        np.testing.assert_allclose(got, want)
    assert any(np.any(v != 0) for v in seen["decision"])  # the decision goes on
    assert runs["fixed"][0] == -1  # nothing learned to restart with


def test_restart_callback_skips_a_restart_with_too_few_epochs_before_it():
    import slf_tf.callbacks

    r = np.random.default_rng(0)
    x, y, xv, yv = r.normal(size=(64, 5)), r.integers(0, 3, 64), r.normal(size=(32, 5)), r.integers(0, 3, 32)
    network = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    model = slf_tf.SLFModel(network, validation_data=(xv, yv), val_batch_size=16)
    model.compile(optimizer="adam", loss=slf_tf.create_loss("slf", ["cross_entropy", "mae"], k=1))
    restart = slf_tf.callbacks.Restart(0.4, min_epochs=4)  # 0.4 x 5 epochs = 2 before it
    with pytest.warns(UserWarning, match=r"Restart skipped: 2 of the fit's 5 epochs come before it"):
        model.fit(x, y, batch_size=16, epochs=5, verbose=0, callbacks=[restart])
    assert restart.restarted_at == -2
    assert int(model.optimizer.iterations.numpy()) == 20  # never reset
    restart = slf_tf.callbacks.Restart(0.4, min_epochs=4)  # 0.4 x 10 epochs = 4: restarts
    model.fit(x, y, batch_size=16, epochs=10, verbose=0, callbacks=[restart])
    assert restart.restarted_at == 16


def test_restart_callback_refuses_a_bad_fraction_and_a_plain_model():
    import slf_tf.callbacks

    for fraction in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"Restart fraction must be in \(0, 1\)"):
            slf_tf.callbacks.Restart(fraction)
    for min_epochs in (-1.0, float("inf"), "4"):
        with pytest.raises(ValueError, match=r"Restart min_epochs must be a finite number >= 0"):
            slf_tf.callbacks.Restart(0.4, min_epochs=min_epochs)
    network = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    network.compile(optimizer="adam", loss=slf_tf.StochasticLoss(["cross_entropy", "mae"]))
    x, y = np.zeros((8, 5), np.float32), np.zeros(8, np.int32)
    with pytest.raises(ValueError, match="Restart works with SLFModel"):
        network.fit(x, y, epochs=1, verbose=0, callbacks=[slf_tf.callbacks.Restart(0.4)])


@pytest.mark.parametrize("label_noise,robust_wins", [(0.0, False), (0.3, True)])
def test_a_sigmoid_output_turns_to_mae_under_flipped_labels_only(label_noise, robust_wins):
    """One logit, the binary bag's bce and mae: flipped training labels move the decision to the bounded loss.

    On clean labels bce keeps the larger P(selected) (breast cancer, seed 0: 0.99 against 0.51); with 30% of the
    training labels flipped mae does (1.00 against 0.18). benchmarks/binary_noise.py measures the accuracy.
    """
    from slf_tf import data as data_lib

    d = data_lib.load("breast_cancer", seed=0, label_noise=label_noise)
    as_target = lambda y: y.astype(np.float32)[:, None]  # noqa: E731
    keras.utils.set_random_seed(0)
    network = keras.Sequential([keras.Input((30,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)])
    loss = slf_tf.StochasticLoss(["bce", "mae"], task="binary", seed=0)
    model = slf_tf.SLFModel(network, validation_data=(d.x_val, as_target(d.y_val)))
    model.compile(optimizer="adam", loss=loss)
    model.fit(d.x_train, as_target(d.y_train), batch_size=64, epochs=30, verbose=0)
    p_bce, p_mae = np.asarray(loss.selection_probabilities())
    assert (p_mae > p_bce + 0.3) if robust_wins else (p_bce > p_mae + 0.3), (p_bce, p_mae)
