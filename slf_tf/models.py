"""Main networks, chosen by name: ``mlp``, ``cnn`` (small CNN), ``resnet20`` (for users with a GPU).

Every model takes flat rows (reshaping to images inside when it needs them) and
outputs unnormalised logits ``[batch, num_outputs]`` (or ``[batch, 1]`` for
regression).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras

__all__ = ["MODELS", "create_model"]

MODELS = ("mlp", "cnn", "resnet20")


def _image_input(inputs, image_shape):
    if image_shape is None:
        raise ValueError("This model needs image inputs (the dataset has no image_shape); use model.name='mlp'.")
    return keras.layers.Reshape(image_shape)(inputs)


def _mlp(inputs, num_outputs, hidden_units: Sequence[int], dropout: float):
    h = keras.layers.Flatten()(inputs)
    for i, units in enumerate(hidden_units):
        h = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(h)
        if dropout:
            h = keras.layers.Dropout(dropout)(h)
    return keras.layers.Dense(num_outputs, name="logits")(h)


def _cnn(inputs, num_outputs, image_shape, filters: Sequence[int], dropout: float):
    h = _image_input(inputs, image_shape)
    for i, f in enumerate(filters):
        h = keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv_{i}")(h)
        if min(h.shape[1], h.shape[2]) >= 4:
            h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(128, activation="relu", name="dense")(h)
    if dropout:
        h = keras.layers.Dropout(dropout)(h)
    return keras.layers.Dense(num_outputs, name="logits")(h)


def _resnet20(inputs, num_outputs, image_shape):
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
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.layers.Dense(num_outputs, name="logits")(h)


def create_model(
    name: str,
    input_shape: tuple[int, ...],
    num_outputs: int,
    *,
    image_shape: tuple[int, ...] | None = None,
    hidden_units: Sequence[int] = (256, 128),
    filters: Sequence[int] = (32, 64),
    dropout: float = 0.0,
) -> keras.Model:
    """Builds the main network ``f(x; w)``; unknown names raise ``ValueError`` listing the known ones."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; known: {list(MODELS)}.")
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1; got {num_outputs}.")
    if image_shape is not None and math.prod(image_shape) != math.prod(input_shape):
        raise ValueError(f"image_shape {image_shape} does not match input_shape {input_shape}.")
    inputs = keras.Input(input_shape, name="x")
    if name == "mlp":
        outputs = _mlp(inputs, num_outputs, hidden_units, dropout)
    elif name == "cnn":
        outputs = _cnn(inputs, num_outputs, image_shape, filters, dropout)
    else:
        outputs = _resnet20(inputs, num_outputs, image_shape)
    return keras.Model(inputs, outputs, name=name)
