"""Several outputs, a decision each (slf_tf.heads): the hypergradient, the step's objective, SLFModel and errors."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import slf_tf
from slf_tf import train_step
from slf_tf.heads import HeadLosses

CLASS_BAG = ["cross_entropy", "focal(gamma=2.0)", "gce(q=0.7)"]
BOX_BAG = ["mae", "huber", "giou"]


def _boxes(r, n):
    corner = r.uniform(0, 1, (n, 2))
    return np.concatenate([corner, corner + r.uniform(0.2, 1, (n, 2))], axis=1)


def _data(seed=0, n=24):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, 5))
    return x, {"class": r.integers(0, 3, n), "box": _boxes(r, n)}


def _two_heads(dtype="float32"):
    keras.utils.set_random_seed(0)  # weight init only
    inputs = keras.Input((5,), dtype=dtype)
    h = keras.layers.Dense(8, activation="tanh", dtype=dtype)(inputs)
    outputs = {
        "class": keras.layers.Dense(3, dtype=dtype, name="class")(h),
        "box": keras.layers.Dense(4, dtype=dtype, name="box")(h),
    }
    return keras.Model(inputs, outputs)


def _heads(**kwargs):
    return HeadLosses(
        {
            "class": slf_tf.StochasticLoss(CLASS_BAG, k=2, seed=0),
            "box": slf_tf.StochasticLoss(BOX_BAG, task="regression", k=2, seed=1),
        },
        **kwargs,
    )


def _central_difference(f, x0, h=1e-5):
    grad = np.zeros_like(x0)
    for i in range(len(x0)):
        e = np.zeros_like(x0)
        e[i] = h
        grad[i] = (f(x0 + e) - f(x0 - e)) / (2 * h)
    return grad


@pytest.mark.parametrize("method", ["exact", "jvp", "finite_difference"])
def test_hypergradient_over_two_heads_matches_brute_force(method):
    """J(c) = sum over heads of L_val(w - eta grad sum_h lambda_h sum_i c_hi L_hi), written out by hand."""
    eta, weights = 0.05, {"class": 1.0, "box": 2.5}
    model, loss = _two_heads("float64"), _heads(loss_weights=weights)
    (x, y), (xv, yv) = _data(0), _data(1, n=16)
    w0, nt = [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]
    bags = {"class": loss.heads[0].bag, "box": loss.heads[1].bag}

    def j_of(c):
        cs = {"class": c[:3], "box": c[3:]}
        with tf.GradientTape() as tape:
            tape.watch(w0)
            pred, _ = model.stateless_call(w0, nt, x, training=True)
            total = sum(
                weights[k] * tf.reduce_sum(cs[k] * tf.reduce_mean(bags[k](y[k], pred[k]), axis=0)) for k in bags
            )
        g = tape.gradient(total, w0)
        pred_val, _ = model.stateless_call([a - eta * b for a, b in zip(w0, g, strict=True)], nt, xv)
        heads = zip(bags, loss.heads, strict=True)
        return float(sum(tf.reduce_mean(h.validation_loss(yv[k], pred_val[k])) for k, h in heads))

    c0 = np.array([0.5, 0.2, 0.3, 0.1, 0.6, 0.3])
    brute = _central_difference(j_of, c0)
    look = train_step.coefficient_gradient(
        model, loss, x, y, xv, yv, tf.constant(c0), lookahead_lr=eta, method=method, fd_epsilon=1e-4
    )
    assert float(look.val_loss) == pytest.approx(j_of(c0), rel=1e-9)
    err = np.max(np.abs(look.coefficient_gradient.numpy() - brute)) / np.max(np.abs(brute))
    assert err <= (1e-3 if method == "finite_difference" else 1e-4), (look.coefficient_gradient, brute)


def test_the_steps_objective_is_keras_multi_output_loss():
    model = _two_heads()
    x, y = _data(0)
    heads = {"class": slf_tf.FixedLoss(CLASS_BAG), "box": slf_tf.FixedLoss(BOX_BAG, task="regression")}
    loss_weights = {"class": 1.0, "box": 0.5}
    loss = HeadLosses(heads, loss_weights)
    one_hot = tf.constant([1.0, 0, 0, 1.0, 0, 0])
    weights = [v.value for v in model.trainable_variables]
    forward = train_step.make_forward(model, loss, x, y, len(x), tf.ones([6]), None)(weights, one_hot)
    model.compile(loss=heads, loss_weights=loss_weights)
    np.testing.assert_allclose(float(forward.objective), model.evaluate(x, y, batch_size=24, verbose=0)[0], rtol=1e-5)


def test_one_head_is_the_loss_itself():
    model, (x, y) = _two_heads(), _data(0)
    single = slf_tf.StochasticLoss(CLASS_BAG, k=2, seed=0)
    both = HeadLosses([single])
    seed = slf_tf.rng.step_seed(0, 3)
    np.testing.assert_allclose(both.sample(seed).coefficients, single.sample(seed).coefficients)
    pred = model(x)["class"]
    got, _ = both.candidate_losses([y["class"]], [pred])
    expected, _ = single.candidate_losses(y["class"], pred)
    np.testing.assert_allclose(got, expected)


def test_slf_model_trains_two_heads_each_with_its_decision():
    (x, y), val = _data(0, n=96), _data(1, n=32)
    model = slf_tf.SLFModel(_two_heads(), validation_data=val, val_batch_size=16)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=dict(zip(["class", "box"], _heads().heads, strict=True)),
                  loss_weights={"class": 1.0, "box": 2.0}, metrics={"class": ["accuracy"]})  # fmt: skip
    before = [v.numpy().copy() for v in model.slf_loss.decision_variables]
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])) and history.history["loss"][-1] < history.history["loss"][0]
    assert {"slf_class_p_gce_q_0.7", "slf_box_p_giou", "class_accuracy"} <= set(history.history)
    assert [int(h.step.numpy()) for h in model.slf_loss.heads] == [18, 18]
    after = model.slf_loss.decision_variables
    assert len(after) == 4 and all(not np.allclose(a, b.numpy()) for a, b in zip(before, after, strict=True))


def test_list_outputs_and_bad_structures_are_named():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(4)(inputs)])
    (x, y), (xv, yv) = _data(0, n=32), _data(1, n=16)
    slf_model = slf_tf.SLFModel(model, validation_data=(xv, [yv["class"], yv["box"]]), val_batch_size=8)
    slf_model.compile(optimizer="adam", loss=list(_heads().heads))
    history = slf_model.fit(x, [y["class"], y["box"]], batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    with pytest.raises(ValueError, match=r"y has no entry for outputs \['box'\]"):
        _heads().validation_loss({"class": y["class"]}, {"class": tf.zeros([32, 3]), "box": tf.zeros([32, 4])})


def test_unsupported_combinations_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"Outputs \['class'\] use an example-weighting strategy"):
        HeadLosses(
            {"class": slf_tf.create_loss("l2rw", CLASS_BAG), "box": slf_tf.FixedLoss(BOX_BAG, task="regression")}
        )
    same = slf_tf.StochasticLoss(CLASS_BAG)
    with pytest.raises(ValueError, match="a loss object of its own"):
        HeadLosses([same, same])
    with pytest.raises(ValueError, match=r"outputs \['box'\] have none"):
        HeadLosses({"class": same, "box": "mse"})
    with pytest.raises(ValueError, match="loss_weights needs several outputs"):
        slf_tf.SLFModel(_two_heads()).compile(loss=same, loss_weights=[2.0])


def test_two_heads_under_mirrored_match_one_device():
    from slf_tf.training import factories

    (x, y), val = _data(0, n=64), _data(1, n=32)
    strategy = factories.create_distribution_strategy("mirrored")
    runs = []
    for s in (tf.distribute.get_strategy(), strategy):
        with s.scope():
            model = slf_tf.SLFModel(_two_heads(), val, keras.optimizers.Adam(0.05), val_batch_size=16)
            losses = dict(zip(["class", "box"], _heads().heads, strict=True))
            model.compile(optimizer=keras.optimizers.Adam(0.01), loss=losses)
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
        runs.append((history["loss"], [np.asarray(v) for v in model.slf_loss.decision_variables]))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-4)
    for a, b in zip(runs[0][1], runs[1][1], strict=True):  # float32 sums in another order; entries near 0
        np.testing.assert_allclose(b, a, rtol=5e-4, atol=1e-3 * np.max(np.abs(a)))


def test_a_two_head_slf_model_saves_and_resumes(tmp_path):
    (x, y), val = _data(0, n=32), _data(1, n=16)
    model = slf_tf.SLFModel(_two_heads(), validation_data=val, val_batch_size=8)
    losses = dict(zip(["class", "box"], _heads().heads, strict=True))
    model.compile(optimizer="adam", loss=losses, loss_weights={"class": 1.0, "box": 2.0})
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "two.keras")
    loaded = keras.models.load_model(tmp_path / "two.keras")
    assert [int(h.step.numpy()) for h in loaded.slf_loss.heads] == [4, 4] and loaded.slf_loss.loss_weights == [1, 2]
    for a, b in zip(model.slf_loss.decision_variables, loaded.slf_loss.decision_variables, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a))
    loaded.set_validation_data(val)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert [int(h.step.numpy()) for h in loaded.slf_loss.heads] == [8, 8]


def test_the_one_loss_keras_views_name_several_outputs():
    x, y = _data(0, n=16)
    model = _two_heads()
    model.compile(optimizer="adam", loss=dict(zip(["class", "box"], _heads().heads, strict=True)))
    for callback, match in (
        (slf_tf.callbacks.SLFTensorBoard("/tmp/unused_logs"), "a loss per output"),
        (slf_tf.callbacks.DecisionUpdate((x, y), (x, y)), "for a loss per output use SLFModel"),
    ):
        with pytest.raises(ValueError, match=match):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])


def test_slf_tensorboard_writes_every_outputs_candidates_of_an_slf_model(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    (x, y), val = _data(0, n=32), _data(1, n=16)
    model = slf_tf.SLFModel(_two_heads(), validation_data=val, val_batch_size=8)
    losses = _heads()
    model.compile(optimizer="adam", loss=dict(zip(["class", "box"], losses.heads, strict=True)))
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[slf_tf.callbacks.SLFTensorBoard(str(tmp_path))])
    runs = sorted(os.listdir(tmp_path / "candidates"))
    assert runs == sorted(f"{k}.{tag}" for k, h in zip(["class", "box"], losses.heads, strict=True) for tag in h.tags)
    acc = event_accumulator.EventAccumulator(str(tmp_path / "candidates" / runs[0]), size_guidance={"tensors": 0})
    acc.Reload()
    steps = [e.step for e in acc.Tensors("slf/selection_probability")]
    assert steps == [4, 8]  # the loss's own step count at each epoch's end
    decision = event_accumulator.EventAccumulator(str(tmp_path / "decision"), size_guidance={"tensors": 0})
    decision.Reload()
    assert "slf/temperature" in decision.Tags()["tensors"]


def test_decision_data_with_a_label_per_output_is_checked_per_output():
    x, y = _data(0, n=16)
    batches = slf_tf.callbacks.as_batches((x, y), "val_data", batch_size=8)
    assert set(next(iter(batches))[1]) == {"class", "box"}
    with pytest.raises(ValueError, match=r"val_data: x and y have different lengths \(\[3, 16\]\)"):
        slf_tf.callbacks.as_batches((x, {"class": y["class"], "box": y["box"][:3]}), "val_data")


def test_the_compact_bar_prints_a_decision_line_per_output(capsys):
    (x, y), val = _data(0, n=32), _data(1, n=16)
    model = slf_tf.SLFModel(_two_heads(), validation_data=val, val_batch_size=8)
    model.compile(optimizer="adam", loss=dict(zip(["class", "box"], _heads().heads, strict=True)))
    model.fit(x, y, batch_size=8, epochs=1, verbose=2)
    out = capsys.readouterr().out
    assert out.count("decision (class): ") == 1 and out.count("decision (box): ") == 1, out
    assert "slf_class_p_" not in out


def test_two_heads_share_one_trust_region():
    """One lookahead for all outputs: one scale (the first head's), moved by the slope of the summed J."""
    (x, y), val = _data(0, n=32), _data(1, n=16)
    model = slf_tf.SLFModel(_two_heads(), val, val_batch_size=8, trust_region=True, virtual_step="sgd",
                            lookahead_lr=500.0)  # fmt: skip
    model.compile(optimizer="adam", loss=dict(zip(["class", "box"], _heads().heads, strict=True)))
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    heads = model.slf_loss.heads
    assert model.slf_loss.virtual_scale is heads[0].virtual_scale and model.loss_state[-1] is heads[0].virtual_scale
    assert float(heads[0].virtual_scale) < 1.0 and float(heads[1].virtual_scale) == 1.0
    assert history["slf_virtual_scale"][-1] < 1.0
