"""Tests of slf_tf.models: shapes, names, bad input."""

import numpy as np
import pytest

from slf_tf import models


@pytest.mark.parametrize("name", models.MODELS)
def test_models_build_and_output_logits(name):
    model = models.create_model(name, (64,), 10, image_shape=(8, 8, 1))
    out = model(np.zeros([3, 64], np.float32), training=False)
    assert out.shape == (3, 10)


def test_regression_head_and_mlp_options():
    model = models.create_model("mlp", (10,), 1, hidden_units=(8, 4), dropout=0.1)
    assert model(np.zeros([2, 10], np.float32)).shape == (2, 1)
    assert [layer.units for layer in model.layers if hasattr(layer, "units")] == [8, 4, 1]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "vgg", "input_shape": (4,), "num_outputs": 2}, r"Unknown model 'vgg'; known: \['mlp'"),
        ({"name": "cnn", "input_shape": (4,), "num_outputs": 2}, "needs image inputs"),
        ({"name": "mlp", "input_shape": (4,), "num_outputs": 0}, "num_outputs must be >= 1"),
        ({"name": "cnn", "input_shape": (64,), "num_outputs": 2, "image_shape": (7, 7, 1)}, "does not match"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.create_model(**kwargs)
