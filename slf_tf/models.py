"""Main networks, chosen by name: ``mlp``, ``cnn`` (small CNN), ``resnet20`` (for users with a GPU).

Every model takes flat rows (reshaping to images inside when it needs them) and
outputs unnormalised logits ``[batch, num_outputs]`` (or ``[batch, 1]`` for
regression); with ``outputs`` (several heads) it outputs a dict, one head per
output on the same trunk: logits for a ``classification`` output, valid boxes
(:class:`CornersFromCentreSize`) for a ``box`` output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import keras

__all__ = ["HEAD_KINDS", "MODELS", "CornersFromCentreSize", "create_model"]

MODELS = ("mlp", "cnn", "resnet20")
HEAD_KINDS = ("classification", "regression", "box")


@keras.saving.register_keras_serializable(package="slf_tf")
class CornersFromCentreSize(keras.layers.Layer):
    """Four raw outputs -> a valid box: sigmoid centre and size, as corners ``(x_min, y_min, x_max, y_max)``.

    Raw corners can come out inverted (``x_max < x_min``), where the IoU losses have no gradient; a box
    parametrised by its centre and size is always valid (as detectors predict offsets, not raw corners).
    """

    def call(self, raw):
        unit = keras.ops.sigmoid(raw)
        centre, half = unit[..., :2], 0.5 * unit[..., 2:]
        return keras.ops.concatenate([centre - half, centre + half], axis=-1)


def _image_input(inputs, image_shape):
    if image_shape is None:
        raise ValueError("This model needs image inputs (the dataset has no image_shape); use model.name='mlp'.")
    return keras.layers.Reshape(image_shape)(inputs)


def _mlp(inputs, hidden_units: Sequence[int], dropout: float):
    h = keras.layers.Flatten()(inputs)
    for i, units in enumerate(hidden_units):
        h = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(h)
        if dropout:
            h = keras.layers.Dropout(dropout)(h)
    return h


def _cnn(inputs, image_shape, filters: Sequence[int], dropout: float):
    h = _image_input(inputs, image_shape)
    for i, f in enumerate(filters):
        h = keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv_{i}")(h)
        if min(h.shape[1], h.shape[2]) >= 4:
            h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(128, activation="relu", name="dense")(h)
    if dropout:
        h = keras.layers.Dropout(dropout)(h)
    return h


def _resnet20(inputs, image_shape):
    """He et al. 2016, CIFAR ResNet-20: 3 stages x 3 basic blocks, 16/32/64 filters."""
    h = _image_input(inputs, image_shape)
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(h)
    h = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(h))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 and min(h.shape[1], h.shape[2]) >= 4 else 1
            shortcut = h
            y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(h)
            y = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(y))
            y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
            y = keras.layers.BatchNormalization()(y)
            if stride != 1 or shortcut.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
                shortcut = keras.layers.BatchNormalization()(shortcut)
            h = keras.layers.Activation("relu")(keras.layers.Add()([y, shortcut]))
    return keras.layers.GlobalAveragePooling2D()(h)


def _head(features, name: str, kind: str, size: int):
    """One output on the shared features: logits or values (``Dense``), or boxes from centre and size."""
    if kind == "box":
        return CornersFromCentreSize(name=name)(keras.layers.Dense(4, name=f"{name}_centre_size")(features))
    return keras.layers.Dense(size, name=name)(features)


def create_model(
    name: str,
    input_shape: tuple[int, ...],
    num_outputs: int,
    *,
    image_shape: tuple[int, ...] | None = None,
    hidden_units: Sequence[int] = (256, 128),
    filters: Sequence[int] = (32, 64),
    dropout: float = 0.0,
    outputs: Mapping[str, tuple[str, int]] | None = None,
) -> keras.Model:
    """Builds the main network ``f(x; w)``; unknown names raise ``ValueError`` listing the known ones.

    ``outputs``: several heads, ``{output: (kind, size)}`` with kind in :data:`HEAD_KINDS` (a ``box``
    head has size 4); the model then returns a dict in that order and ``num_outputs`` is unused.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; known: {list(MODELS)}.")
    if outputs is None and num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1; got {num_outputs}.")
    for output, (kind, size) in (outputs or {}).items():
        if kind not in HEAD_KINDS or size < 1 or (kind == "box" and size != 4):
            raise ValueError(
                f"Output {output!r} is ({kind!r}, {size}); an output is (kind, size >= 1) with kind in "
                f"{list(HEAD_KINDS)}, and a box has size 4."
            )
    if image_shape is not None and math.prod(image_shape) != math.prod(input_shape):
        raise ValueError(f"image_shape {image_shape} does not match input_shape {input_shape}.")
    inputs = keras.Input(input_shape, name="x")
    if name == "mlp":
        features = _mlp(inputs, hidden_units, dropout)
    elif name == "cnn":
        features = _cnn(inputs, image_shape, filters, dropout)
    else:
        features = _resnet20(inputs, image_shape)
    if outputs is None:
        return keras.Model(inputs, keras.layers.Dense(num_outputs, name="logits")(features), name=name)
    heads = {output: _head(features, output, kind, size) for output, (kind, size) in outputs.items()}
    return keras.Model(inputs, heads, name=name)
