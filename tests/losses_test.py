"""Tests of the candidate-loss registry: values (by hand and vs keras.losses), gradients, bad input."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from slf_tf import losses

# One example, 3 classes, label 0, probabilities p = [0.7, 0.2, 0.1] (logits = log p).
P = np.array([[0.7, 0.2, 0.1]])
LOGITS = np.log(P)
LABEL = np.array([0])
py = 0.7

CLASSIFICATION_TABLE = [
    ("cross_entropy", -math.log(py)),
    ("focal(gamma=2.0)", -((1 - py) ** 2) * math.log(py)),
    ("focal(gamma=0)", -math.log(py)),
    ("label_smoothing(epsilon=0.3)", -(0.8 * math.log(0.7) + 0.1 * math.log(0.2) + 0.1 * math.log(0.1))),
    ("hinge", max(0.0, 1 + math.log(0.2) - math.log(0.7))),
    ("squared_hinge", max(0.0, 1 + math.log(0.2) - math.log(0.7)) ** 2),
    ("brier", 0.3**2 + 0.2**2 + 0.1**2),
    ("mae", 0.3 + 0.2 + 0.1),
    ("gce(q=0.5)", (1 - math.sqrt(0.7)) / 0.5),
    ("symmetric_ce(alpha=0.1, beta=1.0)", 0.1 * -math.log(0.7) + 4.0 * 0.3),
    ("poly1(epsilon=2.0)", -math.log(0.7) + 2.0 * 0.3),
]


@pytest.mark.parametrize("spec,expected", CLASSIFICATION_TABLE)
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("label_form", ["sparse", "sparse_float_2d", "one_hot"])
def test_classification_values(spec, expected, from_logits, label_form):
    y_pred = LOGITS if from_logits else P
    labels = {
        "sparse": LABEL,
        "sparse_float_2d": LABEL[:, None].astype(np.float32),
        "one_hot": np.eye(3)[LABEL],
    }
    if not from_logits and spec.startswith(("hinge", "squared_hinge")):
        # on probabilities the hinge's scores are the probabilities themselves
        expected = max(0.0, 1 + 0.2 - 0.7) ** (2 if spec.startswith("squared") else 1)
    value = losses.get(spec, from_logits=from_logits)(labels[label_form], y_pred)
    assert value.shape == (1,)
    np.testing.assert_allclose(value.numpy(), [expected], rtol=1e-5)


REGRESSION_TABLE = [
    ("mse", np.mean([0.25, 4.0])),
    ("mae", np.mean([0.5, 2.0])),
    ("huber(delta=1.0)", np.mean([0.5 * 0.25, 1.0 * (2.0 - 0.5)])),
    ("log_cosh", np.mean([math.log(math.cosh(0.5)), math.log(math.cosh(2.0))])),
    ("quantile(tau=0.9)", np.mean([0.9 * 0.5, (0.9 - 1) * -2.0])),
]


@pytest.mark.parametrize("spec,expected", REGRESSION_TABLE)
def test_regression_values(spec, expected):
    y_true = np.array([[1.0, 0.0]])
    y_pred = np.array([[0.5, 2.0]])  # residuals y - f = [0.5, -2]
    np.testing.assert_allclose(losses.get(spec, task="regression")(y_true, y_pred).numpy(), [expected], rtol=1e-6)


def test_binary_values():
    z = np.array([0.3, -1.2])
    y = np.array([1.0, 0.0])
    p = 1 / (1 + np.exp(-z))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(losses.get("bce", task="binary")(y, z), bce, rtol=1e-6)
    p_t = np.where(y == 1, p, 1 - p)
    np.testing.assert_allclose(losses.get("focal_bce(gamma=2)", task="binary")(y, z), (1 - p_t) ** 2 * bce, rtol=1e-6)
    np.testing.assert_allclose(losses.get("binary_hinge", task="binary")(y, z), [0.7, 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        losses.get("bce", task="binary", from_logits=False)(y[:, None], p[:, None]), bce, rtol=1e-5
    )
    np.testing.assert_allclose(losses.get("mae", task="binary")(y, z), np.abs(y - p), rtol=1e-6)
    np.testing.assert_allclose(losses.get("gce(q=0.5)", task="binary")(y, z), (1 - p_t**0.5) / 0.5, rtol=1e-5)


@pytest.mark.parametrize("spec", ["gce(q=0.7)", "gce(q=1.0)", "focal_bce(gamma=2.0)"])
def test_binary_robust_losses_equal_the_two_class_ones(spec):
    """A sigmoid logit s is the two-class softmax on [0, s]: the binary form of a loss must agree with it."""
    rng = np.random.default_rng(1)
    s, y = rng.normal(size=64) * 3, rng.integers(0, 2, size=64)
    two_class = np.stack([np.zeros_like(s), s], axis=-1)
    classification_spec = spec.replace("focal_bce", "focal")
    expected = losses.get(classification_spec)(y, two_class)
    np.testing.assert_allclose(losses.get(spec, task="binary")(y.astype(float), s), expected, rtol=1e-5, atol=1e-6)
    # and mae is half the two-class mae (which sums |p - y| over both classes)
    np.testing.assert_allclose(
        2 * losses.get("mae", task="binary")(y.astype(float), s), losses.get("mae")(y, two_class), rtol=1e-5
    )


def _on_probabilities(keras_loss):
    """A Keras loss of probabilities, called on logits (Keras' MeanAbsoluteError has no ``from_logits``)."""
    return lambda y_true, logits: keras_loss(y_true, tf.sigmoid(logits))


@pytest.mark.parametrize(
    "spec,task,keras_loss,from_logits",
    [
        ("cross_entropy", "classification", keras.losses.SparseCategoricalCrossentropy, True),
        ("cross_entropy", "classification", keras.losses.SparseCategoricalCrossentropy, False),
        ("mse", "regression", keras.losses.MeanSquaredError, None),
        ("mae", "regression", keras.losses.MeanAbsoluteError, None),
        ("huber(delta=0.7)", "regression", lambda **kw: keras.losses.Huber(delta=0.7, **kw), None),
        ("log_cosh", "regression", keras.losses.LogCosh, None),
        ("bce", "binary", keras.losses.BinaryCrossentropy, True),
        ("mae", "binary", lambda from_logits, **kw: _on_probabilities(keras.losses.MeanAbsoluteError(**kw)), True),
    ],
)
def test_matches_keras(spec, task, keras_loss, from_logits):
    rng = np.random.default_rng(0)
    kwargs = {"reduction": None}
    if task == "classification":
        y_true = rng.integers(0, 5, size=32)
        y_pred = rng.normal(size=(32, 5)) * 3
        if not from_logits:
            y_pred = tf.nn.softmax(y_pred).numpy()
        kwargs["from_logits"] = from_logits
    elif task == "regression":
        y_true, y_pred = rng.normal(size=(32, 3)), rng.normal(size=(32, 3)) * 2
    else:
        y_true, y_pred = rng.integers(0, 2, size=(32, 1)).astype(float), rng.normal(size=(32, 1)) * 3
        kwargs["from_logits"] = from_logits
    ours = losses.get(spec, task=task, from_logits=bool(from_logits) if from_logits is not None else True)
    np.testing.assert_allclose(ours(y_true, y_pred), keras_loss(**kwargs)(y_true, y_pred), rtol=2e-5, atol=1e-6)


# `forward` needs its noise matrix from a combined loss: tests/transition_test.py.
@pytest.mark.parametrize("spec", [n for n in losses.known("classification") if n != "forward"])
@pytest.mark.parametrize("from_logits", [True, False])
def test_classification_gradients_finite_including_probabilities_0_and_1(spec, from_logits):
    rng = np.random.default_rng(1)
    if from_logits:
        y_pred = np.concatenate([rng.normal(size=(30, 4)) * 5, [[60.0, -60.0, 0.0, 0.0], [-60.0, 60.0, 0.0, 0.0]]])
    else:
        y_pred = np.concatenate([tf.nn.softmax(rng.normal(size=(30, 4))).numpy(), [[1, 0, 0, 0], [0, 1, 0, 0.0]]])
    y_pred = tf.constant(y_pred, tf.float32)
    y_true = np.concatenate([rng.integers(0, 4, size=30), [0, 0]])
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        value = losses.get(spec, from_logits=from_logits)(y_true, y_pred)
    grad = tape.gradient(value, y_pred)
    assert np.all(np.isfinite(value.numpy())) and np.all(np.isfinite(grad.numpy())), spec


BOX_LOSSES = ("iou", "giou", "diou")  # boxes [..., 4]: tests/box_losses_test.py


@pytest.mark.parametrize(
    "spec,task",
    [(n, "regression") for n in losses.known("regression") if n not in BOX_LOSSES]
    + [(n, "binary") for n in losses.known("binary")],
)
def test_other_gradients_finite(spec, task):
    y_pred = tf.constant([[-80.0], [80.0], [0.0], [3.0]])
    y_true = np.array([[1.0], [0.0], [1.0], [0.0]])
    for from_logits in (True, False):
        pred = y_pred if from_logits or task != "binary" else tf.constant([[0.0], [1.0], [0.5], [0.9]])
        with tf.GradientTape() as tape:
            tape.watch(pred)
            value = losses.get(spec, task=task, from_logits=from_logits)(y_true, pred)
        assert np.all(np.isfinite(value.numpy())) and np.all(np.isfinite(tape.gradient(value, pred).numpy()))


def test_bag_matches_individual_losses():
    rng = np.random.default_rng(2)
    y_true, y_pred = rng.integers(0, 4, size=16), rng.normal(size=(16, 4)).astype(np.float32)
    specs = ["cross_entropy", "focal(gamma=2.0)", "mae", "gce"]
    out = losses.LossBag(specs)(y_true, y_pred).numpy()
    assert out.shape == (16, 4)
    for i, s in enumerate(specs):
        np.testing.assert_allclose(out[:, i], losses.get(s)(y_true, y_pred), rtol=1e-6)


def test_parse_parameters():
    assert losses.parse("focal(gamma=0.5)") == ("focal", {"gamma": 0.5})
    assert losses.parse("focal") == ("focal", {"gamma": 2.0})
    assert losses.parse(" huber( delta = 2 ) ", task="regression") == ("huber", {"delta": 2.0})


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: losses.LossBag([]), r"The bag of losses is empty; give at least one of \[.*'cross_entropy'"),
        (lambda: losses.LossBag(["mae", "cross_entropy", "mae"]), r"Duplicate losses in the bag: \['mae'\]"),
        (lambda: losses.LossBag(["focal", "focal(gamma=2.0)"]), "Duplicate losses"),
        (lambda: losses.LossBag("cross_entropy"), "must be a list of names"),
        (lambda: losses.get("crossentropy"), r"Unknown classification loss 'crossentropy'; known: \[.*'cross_entropy'"),
        (lambda: losses.get("huber"), "Unknown classification loss 'huber'"),
        (lambda: losses.get("mse", task="vision"), r"Unknown task 'vision'; known: \['classification'"),
        (lambda: losses.get("focal(gamma=-1)"), r"Parameter gamma of loss 'focal' must be >= 0; got -1.0"),
        (lambda: losses.get("gce(q=0)"), r"Parameter q of loss 'gce' must be in \(0, 1\]; got 0.0"),
        (
            lambda: losses.get("focal(alpha=1)"),
            r"Loss 'focal' has no parameter 'alpha'; allowed: \['gamma'\]",
        ),
        (lambda: losses.get("mae(x=1)"), "has no parameter 'x'; allowed: none"),
        (lambda: losses.get("focal(2.0)"), "must be given as key=value"),
        (lambda: losses.get("focal(gamma='a')"), "must be a number"),
        (lambda: losses.get("focal(gamma=float('nan'))"), "must be a number"),
        (lambda: losses.get("focal(gamma="), "Cannot parse"),
        (lambda: losses.get(3), "named by a string"),
    ],
)
def test_bad_names_and_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "y_true,y_pred,match",
    [
        (
            np.zeros([4, 3]),
            np.zeros([4, 5], np.float32),
            r"integer labels \[batch\] or \[batch, 1\], or one-hot",
        ),
        (np.zeros([5]), np.zeros([4, 5], np.float32), "batch sizes differ"),
        (np.zeros([4]), np.zeros([4], np.float32), r"must be \[batch, classes\]"),
        (np.zeros([4]), np.zeros([4, 5], np.int32), "y_pred must be floating point; got dtype int32"),
        (np.array(["a", "b"]), np.zeros([2, 5], np.float32), "y_true must be numeric; got dtype string"),
    ],
)
def test_shape_and_dtype_mismatch(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        losses.get("cross_entropy")(y_true, y_pred)


def test_regression_shape_mismatch():
    with pytest.raises(ValueError, match="does not match"):
        losses.get("mse", task="regression")(np.zeros([4, 2]), np.zeros([4, 3], np.float32))


def test_a_parameter_given_twice_is_refused_and_distinct_values_keep_distinct_names():
    with pytest.raises(ValueError, match=r"Parameter gamma is given twice in 'focal\(gamma=2.0, gamma=3.0\)'"):
        losses.parse("focal(gamma=2.0, gamma=3.0)")
    bag = losses.LossBag(["focal(gamma=1e-3)", "focal(gamma=1e+3)"])  # two candidates, two names
    assert [losses.candidate_tag(s) for s in bag.specs] == ["focal_gamma_1e-3", "focal_gamma_1e3"]
