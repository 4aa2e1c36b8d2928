"""The trust region on the virtual step: its scale rule, its hypergradient against brute force, its state."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import slf_tf
from slf_tf import decision, hypergrad, train_step
from slf_tf.experiments import fair_fit

ETA = 0.05
SPECS = ["cross_entropy", "focal(gamma=2.0)", "mae", "squared_hinge"]


def _data(seed=0):
    r = np.random.default_rng(seed)
    x, xv = r.normal(size=(24, 5)), r.normal(size=(16, 5))
    return x, r.integers(0, 3, 24), xv, r.integers(0, 3, 16)


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((5,), dtype="float64"),
            keras.layers.Dense(6, activation="tanh", dtype="float64"),
            keras.layers.Dense(3, dtype="float64"),
        ]
    )


def _softmax_loss(beta):
    loss = slf_tf.StochasticLoss(SPECS, k="inf")
    loss.decision_network = decision.DecisionNetwork(loss.num_losses, dtype="float64")
    loss.decision_network.beta.assign(beta)
    return loss


def _j(model, loss, data, c, eta):
    """J(c) = L_val(w - eta grad_w sum_i c_i L_i(w)), with a plain tape."""
    x, y, xv, yv = data
    w, nt = [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(w)
        pred, _ = model.stateless_call(w, nt, x, training=True)
        total = tf.reduce_sum(c * tf.reduce_mean(loss.bag(y, pred), axis=0))
    g = tape.gradient(total, w)
    pred_val, _ = model.stateless_call([a - eta * b for a, b in zip(w, g, strict=True)], nt, xv, training=False)
    return float(tf.reduce_mean(loss.validation_loss(yv, pred_val)))


def _central_difference(f, x0, h=1e-5):
    out = np.zeros_like(x0)
    for i in range(len(x0)):
        e = np.zeros_like(x0)
        e[i] = h
        out[i] = (f(x0 + e) - f(x0 - e)) / (2 * h)
    return out


def _decide(model, loss, data, eta=ETA, trust_region=True):
    """One plain-SGD (lr 1) decision update; returns (the beta gradient it applied, its metrics)."""
    step = train_step.TrainStep(
        model,
        loss,
        keras.optimizers.SGD(0.0),
        keras.optimizers.SGD(1.0),
        train_step.DecisionSettings(lookahead_lr=eta, virtual_step="sgd", trust_region=trust_region),
    )
    before = loss.decision_network.beta.numpy().copy()
    metrics = step.decide(0, *data)
    grad = before - loss.decision_network.beta.numpy()
    loss.decision_network.beta.assign(before)
    return grad, metrics


@pytest.mark.parametrize(
    ("scale", "slope", "expected"),
    [(1.0, 2.0, 1.0), (0.25, 2.0, 0.5), (0.25, -2.0, 0.125), (2.0**-20, -1.0, 2.0**-20), (0.5, np.nan, 0.5)],
)
def test_scale_halves_after_an_overshoot_and_doubles_up_to_one_otherwise(scale, slope, expected):
    # slope = -sum_i c_i dJ/dc_i: c = [1, 0] and dJ/dc = [-slope, 7] (a candidate with c = 0 has no say).
    got = hypergrad.next_trust_scale(scale, tf.constant([1.0, 0.0]), tf.constant([-slope, 7.0]))
    assert float(got) == expected


def test_hypergradient_is_per_unit_of_the_scaled_step_and_the_scale_follows_the_slope():
    """At scale s the step is w - s eta g; the decision learns from dJ/dc / s, and s moves by the slope's sign."""
    model, data = _mlp(), _data(1)
    beta0 = np.array([0.3, -0.2, 0.5, 0.0])
    for s in (1.0, 0.25):
        loss = _softmax_loss(beta0)
        loss.virtual_scale.assign(s)
        grad, metrics = _decide(model, loss, data)
        c0 = tf.nn.softmax(tf.constant(beta0)).numpy()

        def j_of(c, loss=loss, eta=s * ETA):
            return _j(model, loss, data, c, eta)

        brute = _central_difference(lambda b: j_of(tf.nn.softmax(tf.constant(b))), beta0)
        np.testing.assert_allclose(grad, brute / s, rtol=1e-4, atol=1e-9)
        d_j_dc = _central_difference(lambda c: j_of(tf.constant(c)), c0)
        slope = -float(np.dot(c0, d_j_dc))
        assert float(metrics["virtual_scale"]) == s
        np.testing.assert_allclose(metrics["scores"], -d_j_dc / s, rtol=1e-4)
        assert float(loss.virtual_scale) == (min(1.0, 2 * s) if slope > 0 else s / 2)


def test_an_overshooting_step_shrinks_and_a_short_one_stays_whole():
    """Ten decision updates: a virtual step 1000x too long is cut down; the paper's eta keeps its length."""
    model, data = _mlp(), _data(2)
    scales = {}
    for eta in (ETA, 50.0):
        loss = _softmax_loss(np.zeros(4))
        step = train_step.TrainStep(
            model,
            loss,
            keras.optimizers.SGD(0.0),
            keras.optimizers.Adam(0.02),
            train_step.DecisionSettings(lookahead_lr=eta, virtual_step="sgd", trust_region=True),
        )
        for i in range(10):
            step.decide(i, *data)
        scales[eta] = float(loss.virtual_scale)
    assert scales[ETA] == 1.0
    assert scales[50.0] <= 1 / 8, scales


def test_without_the_trust_region_the_scale_is_left_alone():
    model, data = _mlp(), _data(1)
    loss = _softmax_loss(np.zeros(4))
    _, metrics = _decide(model, loss, data, eta=50.0, trust_region=False)
    assert float(loss.virtual_scale) == 1.0 and "virtual_scale" not in metrics


def test_bad_setting_is_refused_and_variant_rows_read_values():
    with pytest.raises(
        ValueError, match=r"trust_region must be True, False or None \(the strategy.s default\); got .yes."
    ):
        train_step.DecisionSettings(trust_region="yes")
    assert fair_fit.variant_settings("slf[trust_region=True,virtual_step=sgd,lookahead_lr=0.1]") == {
        "trust_region": True,
        "virtual_step": "sgd",
        "lookahead_lr": 0.1,
    }


def _fit(trust_region, path):
    r = np.random.default_rng(0)
    x, y = r.normal(size=(64, 5)).astype("float32"), r.integers(0, 3, 64)
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    model = slf_tf.SLFModel(net, (x[:16], y[:16]), trust_region=trust_region, lookahead_lr=50.0, virtual_step="sgd")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=slf_tf.StochasticLoss(SPECS))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    model.save(path)
    return model


def test_slf_model_saves_the_scale_and_files_without_it_still_load(tmp_path):
    trusted = _fit(True, tmp_path / "trusted.keras")
    scale = float(trusted.slf_loss.virtual_scale)
    assert scale < 1.0  # eta = 50 overshoots
    loaded = keras.models.load_model(tmp_path / "trusted.keras")
    assert loaded.settings.trust_region and float(loaded.slf_loss.virtual_scale) == scale
    plain = _fit(False, tmp_path / "plain.keras")
    assert len(plain.loss_state) == len(trusted.loss_state) - 1
    reloaded = keras.models.load_model(tmp_path / "plain.keras")
    assert not reloaded.settings.trust_region and float(reloaded.slf_loss.virtual_scale) == 1.0
    legacy = {k: v for k, v in plain.get_config().items() if k != "trust_region"}  # saved before the setting
    assert not slf_tf.SLFModel.from_config(legacy).settings.trust_region


def test_loss_config_keeps_the_scale_and_reads_a_state_saved_before_it():
    loss = slf_tf.StochasticLoss(SPECS)
    loss.virtual_scale.assign(0.125)
    config = loss.get_config()
    assert float(slf_tf.StochasticLoss.from_config(config).virtual_scale) == 0.125
    config["state"] = config["state"][:-1]  # as saved before the trust region existed
    assert float(slf_tf.StochasticLoss.from_config(config).virtual_scale) == 1.0


def _trainer_config(**overrides):
    import helpers

    # eta = 50: a virtual step that overshoots, so the scale moves within a few steps.
    settings = {"decision.trust_region": True, "decision.virtual_step": "sgd", "decision.lookahead_lr": 50.0}
    return helpers.config(**settings, **overrides)


def test_trainer_checkpoints_the_scale_and_resumes_from_it(tmp_path):
    from slf_tf.training.trainer import Trainer

    first = Trainer(_trainer_config(num_train_steps=10), str(tmp_path))
    first.run()
    scale = float(first.loss.virtual_scale)
    assert scale < 1.0
    resumed = Trainer(_trainer_config(num_train_steps=20), str(tmp_path))
    assert float(resumed.loss.virtual_scale) == 1.0  # a fresh loss, before the checkpoint is read
    resumed.checkpointer.restore()
    assert resumed.step == 10 and float(resumed.loss.virtual_scale) == scale
    resumed.run()
    assert resumed.step == 20
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert any(0 < r.get("slf/virtual_scale", 0) < 1 for r in rows)  # logged for TensorBoard and the jsonl


def test_the_layout_charts_the_scale_only_with_the_trust_region():
    from slf_tf import summaries

    def titles(layout):
        return [chart.title for category in layout.category for chart in category.chart]

    assert "the virtual step's trust-region scale" in titles(summaries.slf_layout(trust_region=True))
    assert "the virtual step's trust-region scale" not in titles(summaries.slf_layout())


def test_a_checkpoint_without_the_scale_still_restores(tmp_path):
    """Checkpoints written before the scale existed: the rest restores, the scale keeps its initial 1."""
    from slf_tf.training import checkpointing

    step = tf.Variable(7)
    checkpointing.Checkpointer({"step": step}, str(tmp_path)).save(7)
    step.assign(0)
    scale = tf.Variable(1.0)
    reader = checkpointing.Checkpointer(
        {"step": step, "virtual_scale": scale}, str(tmp_path), optional=("virtual_scale",)
    )
    assert reader.restore() is not None and int(step.numpy()) == 7 and float(scale.numpy()) == 1.0
    strict = checkpointing.Checkpointer({"step": step, "virtual_scale": scale}, str(tmp_path))
    with pytest.raises(ValueError, match="No readable checkpoint"):
        strict.restore()


def test_mirrored_trust_region_matches_one_device(tmp_path):
    from slf_tf.training.trainer import Trainer

    single = Trainer(_trainer_config(num_train_steps=12), str(tmp_path / "single"))
    single.run()
    mirrored = Trainer(_trainer_config(num_train_steps=12, distribution="mirrored"), str(tmp_path / "mirrored"))
    assert mirrored.strategy.num_replicas_in_sync == 2
    mirrored.run()
    assert float(single.loss.virtual_scale) < 1.0
    assert float(np.asarray(mirrored.loss.virtual_scale)) == float(single.loss.virtual_scale)
    for a, b in zip(single.loss.decision_variables, mirrored.loss.decision_variables, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("owner", ["SLFModel", "DecisionUpdate"])
def test_an_unknown_decision_setting_is_named_with_the_known_ones(owner):
    x, y = np.zeros((4, 5), "float32"), np.zeros(4, "int32")
    with pytest.raises(
        ValueError, match=rf"{owner} got unknown decision settings \['trust_regoin'\]; known: .*'trust_region'"
    ):
        if owner == "SLFModel":
            slf_tf.SLFModel(keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)]), (x, y), trust_regoin=True)
        else:
            slf_tf.callbacks.DecisionUpdate((x, y), (x, y), trust_regoin=True)


@pytest.mark.parametrize(
    ("strategy", "setting", "expected"),
    [
        ("slf", None, True),  # None: the strategy's default, on where the decision selects losses
        ("joint", None, True),
        ("softmax", None, True),
        ("meta_weight_net", None, False),  # its paper's full lookahead
        ("meta_weight_net", True, True),  # an explicit setting wins either way
        ("slf", False, False),
    ],
)
def test_the_default_follows_the_strategy_and_an_explicit_setting_wins(strategy, setting, expected, tmp_path):
    import helpers

    from slf_tf.training.trainer import Trainer

    overrides = {"loss.strategy": strategy, "num_train_steps": 2}
    if strategy == "meta_weight_net":
        overrides["loss.fixed"] = "cross_entropy"
    if setting is not None:
        overrides["decision.trust_region"] = setting
    config = helpers.config(**overrides)
    assert (config.decision.trust_region is None) == (setting is None)  # the config's default is None
    loss = slf_tf.create_loss(strategy, SPECS, **({"loss": "cross_entropy"} if strategy == "meta_weight_net" else {}))
    assert train_step.DecisionSettings(trust_region=setting).uses_trust_region(loss) is expected
    assert Trainer(config, str(tmp_path)).train_step.trust_region is expected


def test_slf_model_keeps_the_scale_only_where_the_strategy_uses_it():
    x, y = np.random.default_rng(0).normal(size=(16, 5)).astype("float32"), np.arange(16) % 3
    sizes = {}
    for name, loss in {
        "slf": slf_tf.StochasticLoss(SPECS),
        "meta_weight_net": slf_tf.create_loss("meta_weight_net", SPECS, loss="cross_entropy"),
    }.items():
        model = slf_tf.SLFModel(keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)]), (x, y))
        model.compile(optimizer="adam", loss=loss)
        assert model.settings.trust_region is None
        sizes[name] = any(v is loss.virtual_scale for v in model.loss_state)
    assert sizes == {"slf": True, "meta_weight_net": False}
