"""The Keras path as Keras users use it: MirroredStrategy fit, Keras' own callbacks, logs, save/reload."""

import glob
import json
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits
from tensorboard.backend.event_processing import event_accumulator

import slf_tf
from slf_tf.training import factories

BAG = ["cross_entropy", "focal(gamma=2.0)", "mae"]


def _digits():
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 16.0).astype(np.float32), y[order].astype(np.int32)
    return (x[:640], y[:640]), (x[640:896], y[640:896]), (x[896:], y[896:])


def _network():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])


def _fused(strategy=None):
    _, val, _ = _digits()
    with (strategy or tf.distribute.get_strategy()).scope():
        model = slf_tf.SLFModel(_network(), val, keras.optimizers.Adam(0.05), val_batch_size=64)
        loss = slf_tf.StochasticLoss(BAG, k=2, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, metrics=["accuracy"])
    return model, loss


def _compiled(strategy=None):
    with (strategy or tf.distribute.get_strategy()).scope():
        model = _network()
        loss = slf_tf.StochasticLoss(BAG, k=2, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, metrics=["accuracy"])
    return model, loss


def _replica_values(variable):
    return [np.asarray(v) for v in tf.distribute.get_strategy().experimental_local_results(variable.value)]


def test_fused_fit_under_mirrored_matches_one_device():
    (x, y), _, _ = _digits()
    strategy = factories.create_distribution_strategy("mirrored")
    one, one_loss = _fused()
    two, two_loss = _fused(strategy)
    h1 = one.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0).history
    h2 = two.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0).history
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=1e-4)
    np.testing.assert_allclose(h2["accuracy"], h1["accuracy"], rtol=1e-4)
    # Measured after 20 steps: 4e-5 relative with the exact rule, 1.6e-4 with the JVP (float32 sums in another
    # order; on one device the two rules agree to 6e-8), amplified by the decision's Adam at lr 0.05.
    for a, b in zip(one_loss.decision_variables, two_loss.decision_variables, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=5e-4, atol=1e-6)
    with strategy.scope():
        for variable in two_loss.state_variables:  # the same decision state on every replica
            first, second = (np.asarray(v) for v in strategy.experimental_local_results(variable.value))
            np.testing.assert_array_equal(first, second)
    assert int(two_loss.step.numpy()) == 20


def test_compiled_loss_and_callback_under_mirrored():
    (x, y), val, (xt, yt) = _digits()
    strategy = factories.create_distribution_strategy("mirrored")
    for with_callback in (False, True):
        model, loss = _compiled(strategy)
        callbacks = [slf_tf.callbacks.DecisionUpdate((x, y), val)] if with_callback else []
        history = model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=callbacks).history
        assert history["loss"][-1] < history["loss"][0]
        assert int(loss.step.numpy()) == (20 if with_callback else 0)  # samples only while the callback trains
        with strategy.scope():
            for variable in loss.state_variables:
                first, second = (np.asarray(v) for v in strategy.experimental_local_results(variable.value))
                np.testing.assert_array_equal(first, second)
        assert np.mean(np.argmax(model.predict(xt, verbose=0), -1) == yt) > 0.5  # 20 steps; chance is 0.1


def test_decision_shows_in_history_and_the_tensorboard_callback(tmp_path):
    (x, y), val, _ = _digits()
    model, _ = _fused()
    board = keras.callbacks.TensorBoard(str(tmp_path / "tb"))
    history = model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[board]).history
    for key in ("slf_p_cross_entropy", "slf_w_mae", "slf_temperature", "slf_hypergrad_norm"):
        assert key in history and len(history[key]) == 2, key
    (events,) = glob.glob(str(tmp_path / "tb" / "train" / "events.*"))
    acc = event_accumulator.EventAccumulator(events, size_guidance={"tensors": 0})
    acc.Reload()
    assert "epoch_slf_p_cross_entropy" in acc.Tags()["tensors"]
    compiled, _ = _compiled()
    update = slf_tf.callbacks.DecisionUpdate((x, y), val)
    history = compiled.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[update]).history
    assert len(history["slf_p_focal_gamma_2.0"]) == 2 and "slf_hypergrad_norm" in history


def _run_values(directory, tag):
    acc = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
    acc.Reload()
    return (
        [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
        if tag in acc.Tags()["tensors"]
        else []
    )


@pytest.mark.parametrize("path", ["slf_model", "callback"])
def test_slf_tensorboard_writes_one_run_per_candidate_wherever_it_stands_in_the_list(tmp_path, path):
    """It reads the loss, not fit's logs: listed before DecisionUpdate it still sees the decision."""
    (x, y), val, _ = _digits()
    log_dir = str(tmp_path / "logs")
    board = slf_tf.callbacks.SLFTensorBoard(log_dir, update_freq=5)
    if path == "slf_model":
        model, _ = _fused()
        model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[board, keras.callbacks.TensorBoard(log_dir)])
    else:
        model, _ = _compiled()
        update = slf_tf.callbacks.DecisionUpdate((x, y), val)
        model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[board, update])
    assert sorted(os.listdir(os.path.join(log_dir, "candidates"))) == ["cross_entropy", "focal(gamma=2.0)", "mae"]
    probabilities = _run_values(os.path.join(log_dir, "candidates", "mae"), "slf/selection_probability")
    assert [step for step, _ in probabilities] == [5, 10, 15, 20]  # every 5 of the 20 steps
    assert all(0.0 <= p <= 1.0 for _, p in probabilities)
    assert len({round(p, 6) for _, p in probabilities}) > 1  # the decision moved, and the board saw it move
    decision = event_accumulator.EventAccumulator(os.path.join(log_dir, "decision"))
    decision.Reload()
    assert {"slf/selection_heatmap", "slf/temperature"} <= set(decision.Tags()["tensors"])
    if path == "slf_model":  # beside keras.callbacks.TensorBoard's own runs, in the same log_dir
        assert {"train", "candidates", "decision"} <= set(os.listdir(log_dir))


def test_slf_model_prints_a_compact_bar_and_keeps_every_key_in_history(capsys):
    (x, y), _, _ = _digits()
    model, _ = _fused()
    history = model.fit(x, y, batch_size=64, epochs=2, verbose=2).history
    out = capsys.readouterr().out
    assert "slf_p_" not in out and "slf_w_" not in out
    assert out.count("decision: ") == 2 and "P " in out  # one line per epoch: the favoured candidates
    assert max(len(line) for line in out.splitlines()) < 160
    assert {"slf_p_mae", "slf_w_mae", "slf_temperature", "slf_hypergrad_norm"} <= set(history)
    model.fit(x, y, batch_size=64, epochs=1, verbose=2, callbacks=[keras.callbacks.ProgbarLogger()])
    assert "slf_p_mae" in capsys.readouterr().out  # a progress bar of your own is kept as it is
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert capsys.readouterr().out == ""


def test_view_callbacks_refuse_what_they_cannot_show():
    with pytest.raises(ValueError, match="update_freq must be 'epoch' or an integer >= 1; got 0"):
        slf_tf.callbacks.SLFTensorBoard("logs", update_freq=0)
    plain = _network()
    plain.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    (x, y), _, _ = _digits()
    with pytest.raises(ValueError, match="SLFTensorBoard needs a model compiled with a slf_tf combined loss"):
        plain.fit(x, y, epochs=1, verbose=0, callbacks=[slf_tf.callbacks.SLFTensorBoard("logs")])


def test_validation_loss_is_noise_free_and_a_cross_entropy_metric_is_comparable():
    (x, y), val, (xt, yt) = _digits()
    model, loss = _compiled()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, metrics=[slf_tf.metrics.objective_metric(loss)])
    update = slf_tf.callbacks.DecisionUpdate((x, y), val)
    history = model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[update], validation_data=(xt, yt))
    assert "val_cross_entropy" in history.history
    first, second = (model.evaluate(xt, yt, verbose=0, return_dict=True) for _ in range(2))
    assert first == second
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(yt, model.predict(xt, verbose=0))
    assert first["cross_entropy"] == pytest.approx(float(ce), rel=1e-5)


def test_keras_reload_restores_the_loss_state(tmp_path):
    (x, y), val, _ = _digits()
    model, loss = _compiled()
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[slf_tf.callbacks.DecisionUpdate((x, y), val)])
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    assert int(reloaded.loss.step.numpy()) == int(loss.step.numpy()) == 10
    for a, b in zip(loss.decision_variables, reloaded.loss.decision_variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(reloaded.loss.temperature().numpy(), loss.temperature().numpy())


def test_model_checkpoint_early_stopping_and_backup_with_slf(tmp_path):
    (x, y), val, (xt, yt) = _digits()
    model, loss = _compiled()
    callbacks = [
        slf_tf.callbacks.DecisionUpdate((x, y), val),
        keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_loss", save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True),
        keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
    ]
    history = model.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=callbacks, validation_data=val).history
    assert len(history["loss"]) >= 2
    best = keras.models.load_model(tmp_path / "best.keras")
    assert isinstance(best.loss, slf_tf.StochasticLoss) and int(best.loss.step.numpy()) > 0
    assert np.mean(np.argmax(best.predict(xt, verbose=0), -1) == yt) > 0.5


@pytest.mark.parametrize(
    "data,match",
    [
        (None, "fit's validation_split cannot feed it"),
        ("strings", "must be an"),
        ((np.zeros((4, 64)), np.zeros(4), np.ones(4)), r"\(x, y, sample_weight\) tuple"),
    ],
)
def test_callback_wiring_errors(data, match):
    with pytest.raises(ValueError, match=match):
        slf_tf.callbacks.DecisionUpdate(data, data)


def test_callback_checks_the_loss_and_unbatched_data():
    (x, y), val, _ = _digits()
    model, _ = _compiled()
    other = slf_tf.StochasticLoss(BAG)
    with pytest.raises(ValueError, match="not the loss the model was compiled with"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[slf_tf.callbacks.DecisionUpdate((x, y), val, loss=other)])
    with pytest.raises(ValueError, match=r"looks unbatched .* call .batch\(n\)"):
        slf_tf.callbacks.DecisionUpdate(tf.data.Dataset.from_tensor_slices((x, y)), val)


def test_regression_loss_in_a_classification_bag_suggests_the_task():
    with pytest.raises(ValueError, match=r"task=.regression."):
        slf_tf.StochasticLoss(["cross_entropy", "mse"])


def test_saved_model_in_a_fresh_process_needs_only_the_import(tmp_path):
    import subprocess
    import sys

    (x, y), val, _ = _digits()
    model, _ = _compiled()
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[slf_tf.callbacks.DecisionUpdate((x, y), val)])
    model.save(tmp_path / "m.keras")
    path = str(tmp_path / "m.keras")
    code = (
        f"import keras, slf_tf; m = keras.models.load_model({path!r}); print(type(m.loss).__name__, int(m.loss.step))"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["StochasticLoss", "10"]


def test_the_old_callback_signature_says_what_changed():
    (x, y), val, _ = _digits()
    with pytest.raises(ValueError, match="takes the loss from the compiled model now"):
        slf_tf.callbacks.DecisionUpdate(slf_tf.StochasticLoss(BAG), (x, y), val)


def test_readme_callback_with_an_optimizer_name_gets_the_decision_learning_rate():
    """DecisionUpdate(..., "adam") as the README writes it: Adam at the decision's 0.02, not Keras' 1e-3,
    which left P(selected) near uniform (0.41-0.73) after hundreds of steps."""
    (x, y), val, _ = _digits()
    model, loss = _compiled()
    update = slf_tf.callbacks.DecisionUpdate((x, y), val, "adam")
    model.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=[update])
    assert float(update.optimizer.learning_rate) == pytest.approx(0.02)
    start = float(slf_tf.StochasticLoss(BAG, k=2).selection_probabilities()[0])  # uniform alpha
    moved = np.abs(loss.selection_probabilities().numpy() - start)
    assert moved.max() > 0.1, loss.selection_probabilities().numpy()  # 30 updates at 0.02 move alpha off zero


def _alpha(loss):
    return loss.decision_variables[0].numpy().copy()


def test_slf_model_keras_file_round_trip_compiled_uncompiled_and_fresh_process(tmp_path):
    import subprocess
    import sys

    (x, y), val, (xt, _) = _digits()
    model, loss = _fused()
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    path = str(tmp_path / "slf.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert int(loaded.loss.step.numpy()) == 10 and type(loaded.loss) is slf_tf.StochasticLoss
    np.testing.assert_array_equal(_alpha(loaded.loss), _alpha(loss))
    np.testing.assert_allclose(loaded.predict(xt, verbose=0), model.predict(xt, verbose=0), rtol=1e-6)
    loaded.set_validation_data(val)  # the validation data is not saved; fit goes on from step 10
    loaded.fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert int(loaded.loss.step.numpy()) == 20
    bare = keras.models.load_model(path, compile=False)  # the loss's state waits for compile
    bare.compile(optimizer="adam", loss=slf_tf.StochasticLoss(BAG, k=2, seed=0))
    assert int(bare.loss.step.numpy()) == 10
    np.testing.assert_array_equal(_alpha(bare.loss), _alpha(loss))
    code = f"import keras, slf_tf; m = keras.models.load_model({path!r}); print(int(m.loss.step), m.loss.strategy)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["10", "slf"]


def test_slf_model_checkpoint_files_load_and_early_stopping_restores_the_decision(tmp_path):
    (x, y), val, _ = _digits()
    model, loss = _fused()
    alphas = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: alphas.append(_alpha(loss)))
    # mode="max" on val_loss: the first epoch is the best, so EarlyStopping stops and restores it.
    stop = keras.callbacks.EarlyStopping("val_loss", patience=1, mode="max", restore_best_weights=True)
    best = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), "val_loss", save_best_only=True, mode="max")
    model.fit(x, y, batch_size=64, epochs=5, verbose=0, validation_data=val, callbacks=[record, stop, best])
    assert len(alphas) == 2 and not np.array_equal(alphas[0], alphas[1])
    np.testing.assert_array_equal(_alpha(loss), alphas[0])  # the decision went back with the network
    assert int(loss.step.numpy()) == 10
    reloaded = keras.models.load_model(str(tmp_path / "best.keras"))
    np.testing.assert_array_equal(_alpha(reloaded.loss), alphas[0])


def test_warnings_for_the_training_data_as_validation_and_for_validation_split():
    (x, y), val, _ = _digits()
    with pytest.warns(UserWarning, match="holds the training inputs themselves"):
        slf_tf.callbacks.DecisionUpdate((x, y), (x, y))
    model, _ = _fused()
    model.set_validation_data((x, y))
    with pytest.warns(UserWarning, match="holds the training inputs themselves"):
        model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    model.set_validation_data(val)
    with pytest.warns(UserWarning, match=r"validation_split=0.2\) only sets what Keras reports"):
        model.fit(x, y, batch_size=64, epochs=1, verbose=0, validation_split=0.2)


@pytest.mark.parametrize("strategy_name", ["l2rw", "meta_weight_net", "joint"])
def test_example_weighting_under_mirrored_matches_one_device(strategy_name):
    """The example weights are normalised over the global batch and the scores are per replica: two replicas
    with half a batch each give one device's step."""
    (x, y), val, _ = _digits()
    mirrored = factories.create_distribution_strategy("mirrored")
    runs = []
    for strategy in (tf.distribute.get_strategy(), mirrored):
        with strategy.scope():
            model = slf_tf.SLFModel(_network(), val, keras.optimizers.Adam(0.05), val_batch_size=64)
            loss = slf_tf.create_loss(strategy_name, BAG, k=2, seed=0)
            model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
        history = model.fit(x[:320], y[:320], batch_size=64, epochs=1, shuffle=False, verbose=0).history
        runs.append((history["loss"], [np.asarray(v) for v in model.network.weights + loss.decision_variables]))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=5e-4)
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        # atol scales with the array: an entry that nearly cancels (5e-5 beside 0.15 in joint's beta) keeps only
        # the float32 rounding of the two replicas' summation order.
        np.testing.assert_allclose(b, a, rtol=5e-3, atol=max(1e-5, 1e-3 * float(np.abs(a).max())))


def test_non_finite_validation_data_is_refused_on_both_paths():
    """One NaN in the decision's split would make every lookahead that draws it NaN: refused up front."""
    (x, y), (xv, yv), _ = _digits()
    xv = xv.copy()
    xv[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"non-finite inputs in 1 example\(s\) \(the first at index 7\)"):
        slf_tf.SLFModel(_network(), (xv, yv))
    with pytest.raises(ValueError, match=r"DecisionUpdate val_data holds non-finite inputs"):
        slf_tf.callbacks.DecisionUpdate((x, y), (xv, yv))
    regression_targets = np.full(len(yv), np.inf, np.float32)
    with pytest.raises(ValueError, match="non-finite labels/targets"):
        slf_tf.SLFModel(_network(), (xv[:, :0] + 1.0, regression_targets))
    # The training data may hold what the guard handles (masked or skipped); only the decision's split is checked.
    slf_tf.callbacks.DecisionUpdate((xv, yv), (x, y))


def test_fit_that_diverges_says_so():
    """Inputs x1e30: fit ends normally in Keras; SLFModel and the callback warn, naming the weights and the fix."""
    (x, y), _, _ = _digits()
    model, _ = _fused()
    with pytest.warns(UserWarning, match=r"SLFModel.fit: .*(weights are not finite|were skipped)"):
        model.fit(x * 1e30, y, batch_size=64, epochs=1, verbose=0)
    plain, _ = _fused()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a healthy fit says nothing
        plain.fit(x, y, batch_size=64, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda loss: loss["state"][-2].__setitem__(0, float("nan")), r"Saved loss state for .* holds non-finite"),
        (lambda loss: loss.update(decision_network="state", hidden_units=2_000_000_000), r"hidden_units must be an"),
        (lambda loss: loss["state"].__setitem__(0, [1, 2, 3]), r"Saved loss state for .* has 3 values"),
    ],
)
def test_a_damaged_or_hostile_keras_file_is_refused_naming_what_is_wrong(tmp_path, edit, message):
    """A .keras file's loss config is data: a NaN decision, a 2e9-wide network or a wrong shape is refused
    before anything is assigned or built."""
    import zipfile

    model, _ = _compiled()
    (x, y), _, _ = _digits()
    model.fit(x[:64], y[:64], batch_size=64, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    with zipfile.ZipFile(path) as z:
        files = {name: z.read(name) for name in z.namelist()}
    config = json.loads(files["config.json"])
    edit(config["compile_config"]["loss"]["config"])
    files["config.json"] = json.dumps(config).encode()
    edited = str(tmp_path / "edited.keras")
    with zipfile.ZipFile(edited, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    with pytest.raises(Exception, match=message):
        keras.models.load_model(edited)
