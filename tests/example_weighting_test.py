"""Per-example scores, L2RW, Meta-Weight-Net and joint against brute-force central differences (float64)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import slf_tf
from slf_tf import hypergrad, rng, train_step
from slf_tf.example_weighting import l2rw_weights

ETA = 0.05
SPECS = ["cross_entropy", "focal(gamma=2.0)", "mae"]


def _data(seed=0):
    r = np.random.default_rng(seed)
    x, xv = r.normal(size=(12, 5)), r.normal(size=(10, 5))
    return x, r.integers(0, 3, 12), xv, r.integers(0, 3, 10)


def _mlp(kernel_regularizer=None):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((5,), dtype="float64"),
            keras.layers.Dense(6, activation="tanh", dtype="float64", kernel_regularizer=kernel_regularizer),
            keras.layers.Dense(3, dtype="float64"),
        ]
    )


def _central_difference(f, x0, h=1e-5):
    grad = np.zeros_like(x0)
    for i in range(len(x0)):
        e = np.zeros_like(x0)
        e[i] = h
        grad[i] = (f(x0 + e) - f(x0 - e)) / (2 * h)
    return grad


def _rel_err(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b)))


def _j_of_example_weights(model, loss, x, y, xv, yv, c):
    """J(eps) = L_val(w - ETA * grad_w sum_j eps_j sum_i c_i l_ji(w) / n): the brute force of per-example scores."""
    w = [v.value for v in model.trainable_variables]
    nt = [v.value for v in model.non_trainable_variables]

    def j(eps):
        with tf.GradientTape() as tape:
            tape.watch(w)
            pred, _ = model.stateless_call(w, nt, x, training=True)
            objective = tf.reduce_sum(tf.constant(eps) * tf.linalg.matvec(loss.bag(y, pred), c)) / len(x)
        g = tape.gradient(objective, w)
        pred_val, _ = model.stateless_call([a - ETA * b for a, b in zip(w, g, strict=True)], nt, xv, training=False)
        return float(tf.reduce_mean(loss.validation_loss(yv, pred_val)))

    return j


def _setup(seed=0):
    model, (x, y, xv, yv) = _mlp(), _data(seed)
    loss = slf_tf.StochasticLoss(SPECS, k=2)
    w = [v.value for v in model.trainable_variables]
    forward = train_step.make_forward(model, loss, x, y, len(x), tf.ones([3], tf.float64))
    val_fn = train_step.make_validation(model, loss, xv, yv, len(xv))
    return model, loss, (x, y, xv, yv), w, forward, val_fn


@pytest.mark.parametrize("method, tol", [("exact", 1e-6), ("jvp", 1e-6), ("finite_difference", 1e-3)])
def test_example_scores_match_brute_force_at_uniform_weights(method, tol):
    """dJ/deps_j = -sum_i c_i D[j, i] / n at eps = 1 (the weights a plain step uses)."""
    model, loss, (x, y, xv, yv), w, forward, val_fn = _setup()
    c = tf.constant([0.5, 0.2, 0.3], tf.float64)
    step = hypergrad.sgd_step(ETA, len(w))
    look = hypergrad.lookahead(forward, val_fn, w, c, step, method=method, fd_epsilon=1e-4, with_example_scores=True)
    got = -tf.linalg.matvec(look.example_scores, c).numpy() / len(x)
    brute = _central_difference(_j_of_example_weights(model, loss, x, y, xv, yv, c), np.ones(len(x)))
    assert _rel_err(got, brute) <= tol, (got, brute)


def test_jvp_coefficient_gradient_equals_exact_and_brute_force():
    model, loss, (x, y, xv, yv), w, forward, val_fn = _setup(1)
    c = tf.constant([0.4, 0.35, 0.25], tf.float64)
    step = hypergrad.sgd_step(ETA, len(w))
    exact = hypergrad.lookahead(forward, val_fn, w, c, step, method="exact")
    jvp = hypergrad.lookahead(forward, val_fn, w, c, step, method="jvp")
    np.testing.assert_allclose(jvp.coefficient_gradient, exact.coefficient_gradient, rtol=1e-9, atol=1e-14)
    assert float(jvp.val_loss) == pytest.approx(float(exact.val_loss), rel=1e-12)
    for a, b in zip(jvp.main_gradients, exact.main_gradients, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert exact.example_scores is None and jvp.example_scores.shape == (len(x), 3)


@pytest.mark.parametrize("regularised", [False, True])
def test_reverse_over_reverse_scores_equal_the_jvp(regularised):
    """exact's D (reverse over reverse through g(V)) is jvp's to float64 tolerance, with the same main step:
    in lookahead, and in reweighted_lookahead from w (L2RW) and from w' (joint), regularisation included."""
    model, (x, y, xv, yv) = _mlp(keras.regularizers.L2(0.3) if regularised else None), _data(6)
    loss = slf_tf.StochasticLoss(SPECS, k=2)
    w = [v.value for v in model.trainable_variables]
    val_fn = train_step.make_validation(model, loss, xv, yv, len(xv))
    forward = train_step.make_forward(model, loss, x, y, len(x), tf.ones([3], tf.float64))
    assert regularised == bool(float(forward(w, tf.ones([3], tf.float64)).regularisation))
    c = tf.constant([0.2, 0.5, 0.3], tf.float64)
    step = hypergrad.sgd_step(ETA, len(w))
    exact = hypergrad.lookahead(forward, val_fn, w, c, step, method="exact", with_example_scores=True)
    jvp = hypergrad.lookahead(forward, val_fn, w, c, step, method="jvp")
    np.testing.assert_allclose(exact.example_scores, jvp.example_scores, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(exact.coefficient_gradient, jvp.coefficient_gradient, rtol=1e-9, atol=1e-15)
    for a, b in zip(exact.main_gradients, jvp.main_gradients, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    weights_fn = lambda scores, fwd: l2rw_weights(scores, fwd.coefficients, fwd.global_batch)  # noqa: E731
    for from_current in (True, False):
        looks = [
            hypergrad.reweighted_lookahead(
                forward, val_fn, w, c, step, weights_fn, from_current=from_current, method=method
            )
            for method in ("exact", "jvp")
        ]
        np.testing.assert_allclose(looks[0].example_scores, looks[1].example_scores, rtol=1e-9, atol=1e-15)
        assert 0 < np.count_nonzero(looks[0].example_weights) < len(x)
        np.testing.assert_allclose(looks[0].example_weights, looks[1].example_weights, rtol=1e-9)
        assert float(looks[0].val_loss) == pytest.approx(float(looks[1].val_loss), rel=1e-12)
        for a, b in zip(looks[0].main_gradients, looks[1].main_gradients, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-15)


def test_l2rw_weights_are_the_papers_rule_by_brute_force():
    """L2RW: eps perturbed around 0, so grad J is taken at w; weights max(-dJ/deps, 0), normalised to sum n."""
    model, loss, (x, y, xv, yv), w, forward, val_fn = _setup(2)
    c = tf.constant([1.0, 0.0, 0.0], tf.float64)
    look = hypergrad.reweighted_lookahead(
        forward,
        val_fn,
        w,
        c,
        hypergrad.sgd_step(ETA, len(w)),
        lambda scores, fwd: l2rw_weights(scores, fwd.coefficients, fwd.global_batch),
        from_current=True,
    )
    d_j = _central_difference(_j_of_example_weights(model, loss, x, y, xv, yv, c), np.zeros(len(x)))
    expected = np.maximum(-d_j, 0.0)
    assert 0 < np.count_nonzero(expected) < len(x)  # the case is not degenerate: some weights are clipped
    expected *= len(x) / expected.sum()
    np.testing.assert_allclose(look.example_weights, expected, rtol=1e-5, atol=1e-9)
    # The main gradient is that of the reweighted objective sum_j e_j l_j / n.
    with tf.GradientTape() as tape:
        tape.watch(w)
        pred, _ = model.stateless_call(w, [], x, training=True)
        objective = tf.reduce_sum(tf.constant(expected) * loss.bag(y, pred)[:, 0]) / len(x)
    for got, want in zip(look.main_gradients, tape.gradient(objective, w), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_l2rw_weights_all_zero_when_no_example_helps():
    scores = tf.constant([[-1.0, 2.0], [-0.5, 0.0]])
    np.testing.assert_array_equal(l2rw_weights(scores, tf.constant([1.0, 0.0]), 2.0), [0.0, 0.0])
    np.testing.assert_allclose(l2rw_weights(scores, tf.constant([0.0, 1.0]), 2.0), [2.0, 0.0])


def _sgd_decision_gradient(model, loss, x, y, xv, yv, step=0, update_decision=True):
    """The decision gradient a step applies, read off a plain-SGD decision update (lr 1); main lr 0."""
    trainer_step = train_step.TrainStep(
        model,
        loss,
        keras.optimizers.SGD(0.0),
        keras.optimizers.SGD(1.0),
        train_step.DecisionSettings(lookahead_lr=ETA, virtual_step="sgd"),
    )
    before = [v.numpy().copy() for v in loss.decision_variables]
    metrics = trainer_step(step, x, y, xv, yv, update_decision=update_decision)
    grads = [b - v.numpy() for b, v in zip(before, loss.decision_variables, strict=True)]
    for v, b in zip(loss.decision_variables, before, strict=True):
        v.assign(b)
    return grads, metrics


def test_meta_weight_net_gradient_is_the_chain_of_brute_force_dj_dv():
    """dJ/dtheta = sum_j dJ/dV_j dV_j/dtheta, with dJ/dV_j by central differences at the net's own weights V."""
    model, (x, y, xv, yv) = _mlp(), _data(3)
    keras.utils.set_random_seed(1)
    loss = slf_tf.create_loss("meta_weight_net", SPECS, weight_net_units=4)
    grads, _ = _sgd_decision_gradient(model, loss, x, y, xv, yv)
    c = tf.constant([1.0, 0.0, 0.0], tf.float64)
    with tf.GradientTape() as tape:
        per_example = loss.bag(y, model(x))[:, 0]
        v = loss.forward_example_weights(per_example)
    d_j_dv = _central_difference(_j_of_example_weights(model, loss, x, y, xv, yv, c), v.numpy())
    expected = tape.gradient(v, loss.decision_variables, output_gradients=tf.constant(d_j_dv, v.dtype))
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=2e-3, atol=1e-7)
    assert any(np.any(g != 0) for g in grads)


def test_meta_weight_net_weights_the_main_objective():
    """The main step's objective is sum_j V(l_j) l_j / n, with V's input and output held fixed."""
    model, (x, y, _, _) = _mlp(), _data(4)
    loss = slf_tf.create_loss("meta_weight_net", SPECS)
    forward = train_step.make_forward(model, loss, x, y, len(x), tf.ones([3], tf.float64))
    out = forward([v.value for v in model.trainable_variables], tf.constant([1.0, 0.0, 0.0], tf.float64))
    ce = loss.bag(y, model(x))[:, 0]
    v = loss.forward_example_weights(ce)
    assert np.all((v.numpy() > 0) & (v.numpy() < 1))
    assert float(out.objective) == pytest.approx(float(tf.reduce_sum(v * ce)) / len(x), rel=1e-6)


def test_joint_decision_uses_uniform_scores_and_main_step_uses_l2rw_weights():
    """joint: dJ/dc from the lookahead at uniform weights (SLF's), main gradient with L2RW's weights of c."""
    model, (x, y, xv, yv) = _mlp(), _data(5)
    joint = slf_tf.create_loss("joint", SPECS, k=2, seed=3)
    slf = slf_tf.create_loss("slf", SPECS, k=2, seed=3)
    joint_grads, metrics = _sgd_decision_gradient(model, joint, x, y, xv, yv, step=2)
    slf_grads, _ = _sgd_decision_gradient(model, slf, x, y, xv, yv, step=2)
    for a, b in zip(joint_grads, slf_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    assert 0.0 < float(metrics.metrics["examples_kept"]) <= 1.0
    # The example weights the main step used: L2RW's rule on the step's c, at the virtual step's w'.
    c = tf.stop_gradient(joint.sample(rng.step_seed(joint.seed, 2)).coefficients)
    d_j = _central_difference(_j_of_example_weights(model, joint, x, y, xv, yv, tf.cast(c, tf.float64)), np.ones(12))
    expected = np.maximum(-d_j, 0.0)
    expected *= len(x) / expected.sum()
    w = [v.value for v in model.trainable_variables]
    forward = train_step.make_forward(model, joint, x, y, len(x), tf.ones([3], tf.float64))
    val_fn = train_step.make_validation(model, joint, xv, yv, len(xv))
    look = hypergrad.reweighted_lookahead(
        forward, val_fn, w, tf.cast(c, tf.float64), hypergrad.sgd_step(ETA, len(w)),
        joint.lookahead_example_weights, from_current=False,
    )  # fmt: skip
    np.testing.assert_allclose(look.example_weights, expected, rtol=1e-5, atol=1e-9)


def test_example_weighting_refuses_the_callback_and_an_unknown_example_loss():
    model = _mlp()
    loss = slf_tf.create_loss("l2rw", SPECS)
    with pytest.raises(ValueError, match=r"Unknown example_loss 'bag'; known: \['fixed', 'uniform'\]"):
        slf_tf.create_loss("meta_weight_net", SPECS, example_loss="bag")
    model.compile(optimizer="sgd", loss=loss)
    x, y, xv, yv = _data()
    callback = slf_tf.callbacks.DecisionUpdate((x, y), (xv, yv))
    with pytest.raises(ValueError, match=r"'l2rw' strategy weights the examples of the main step.*SLFModel"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])


def test_auto_method_is_jvp_for_a_lookahead_at_w_and_exact_otherwise():
    model = _mlp()
    for strategy, method in (("slf", "exact"), ("l2rw", "jvp"), ("meta_weight_net", "exact"), ("joint", "exact")):
        step = train_step.TrainStep(
            model, slf_tf.create_loss(strategy, SPECS), keras.optimizers.SGD(0.1), keras.optimizers.SGD(1.0)
        )
        assert step.method == method, strategy


def test_l2rw_uniform_example_loss_weights_the_bag_mean():
    loss = slf_tf.create_loss("l2rw", SPECS, example_loss="uniform")
    np.testing.assert_allclose(loss.expected_coefficients(), [1 / 3] * 3)
    assert slf_tf.create_loss("l2rw", SPECS).expected_coefficients().numpy().tolist() == [1.0, 0.0, 0.0]


def test_meta_weight_net_trains_through_the_keras_callback():
    """A compiled loss weights Keras' own step by V(l); the callback trains V from the lookahead."""
    x, y, xv, yv = _data(6)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    loss = slf_tf.create_loss("meta_weight_net", SPECS)
    model.compile(optimizer="adam", loss=loss)
    before = [v.numpy().copy() for v in loss.decision_variables]
    callback = slf_tf.callbacks.DecisionUpdate((x, y), (xv, yv))
    model.fit(x.astype("float32"), y, batch_size=4, epochs=1, verbose=0, callbacks=[callback])
    assert float(callback.optimizer.learning_rate) == pytest.approx(1e-3)  # the paper's rate
    assert any(np.any(b != v.numpy()) for b, v in zip(before, loss.decision_variables, strict=True))
    pred = model(x.astype("float32"))
    ce = loss.bag(y, pred)[:, 0]
    assert float(loss(y, pred)) == pytest.approx(float(tf.reduce_mean(ce)), rel=1e-5)  # evaluation: unweighted
    loss.sampling.assign(True)  # what the callback turns on for training batches
    weighted = float(loss(y, pred))
    loss.sampling.assign(False)
    assert weighted == pytest.approx(float(tf.reduce_mean(loss.forward_example_weights(ce) * ce)), rel=1e-5)
