"""The decision network h(.; v): selection logits alpha and weight logits beta, each ``[N]``.

Kinds:
  * ``static``: alpha and beta are free variables (one choice for the whole run,
    moved by the hypergradient).
  * ``state``: a small MLP on training-state features (progress t/T, running means
    of log L_i, running validation loss), so the choice can change across stages of
    training.
Both start at alpha = beta = 0: every candidate equally likely, equally weighted.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

__all__ = ["DecisionNetwork", "KINDS", "create_decision_network", "feature_size", "learning_rate_scale"]

KINDS = ("static", "state")
MAX_WIDTH = 2**16  # a wider state network is a typo or a hostile file, not a decision network


def feature_size(num_losses: int) -> int:
    """``[progress, running log L_1..N, running validation loss]``."""
    return num_losses + 2


def learning_rate_scale(kind: str, hidden_units: int) -> float:
    """The factor on a strategy's decision learning rate that makes a logit move no faster than a free one.

    Adam moves every weight by about the learning rate per step. A ``static`` logit is one weight; a
    ``state`` logit is the sum of ``hidden_units`` kernel entries times activations in (-1, 1) plus a bias,
    so the same rate moves it up to ``hidden_units + 1`` times as far, and the choice saturates within a
    few hundred steps (measured: docs/design.md, "The state network's learning rate").
    """
    return 1.0 if kind == "static" else 1.0 / (hidden_units + 1)


@keras.saving.register_keras_serializable(package="slf_tf")
class DecisionNetwork(keras.layers.Layer):
    """``features [F] -> (alpha [N], beta [N])``.

    Args:
      num_losses: N, the size of the bag.
      kind: ``"static"`` or ``"state"``.
      hidden_units: width of the ``state`` MLP's hidden layer.
    """

    def __init__(self, num_losses: int, kind: str = "static", hidden_units: int = 32, **kwargs: Any):
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ValueError(f"Unknown decision network kind {kind!r}; known: {list(KINDS)}.")
        if isinstance(num_losses, bool) or not isinstance(num_losses, int) or num_losses < 1:
            raise ValueError(f"num_losses must be an integer >= 1; got {num_losses!r}.")
        if isinstance(hidden_units, bool) or not isinstance(hidden_units, int) or not 1 <= hidden_units <= MAX_WIDTH:
            raise ValueError(f"hidden_units must be an integer in [1, {MAX_WIDTH}]; got {hidden_units!r}.")
        self.num_losses, self.kind, self.hidden_units = num_losses, kind, int(hidden_units)
        n = num_losses
        if kind == "static":
            self.alpha = self.add_weight(shape=(n,), initializer="zeros", name="alpha")
            self.beta = self.add_weight(shape=(n,), initializer="zeros", name="beta")
        else:
            self.hidden = keras.layers.Dense(self.hidden_units, activation="tanh", name="hidden")
            # Zero output kernel and bias: uniform choice at the start; the hidden
            # activations are non-zero, so the first gradient still reaches the kernel.
            self.head = keras.layers.Dense(2 * n, kernel_initializer="zeros", name="head")
            self.hidden.build((None, feature_size(n)))
            self.head.build((None, self.hidden_units))
        self.built = True

    def call(self, features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if self.kind == "static":
            return tf.convert_to_tensor(self.alpha), tf.convert_to_tensor(self.beta)
        out = self.head(self.hidden(tf.reshape(features, [1, -1])))[0]
        return out[: self.num_losses], out[self.num_losses :]

    def forget(self, index: int, optimizer: keras.optimizers.Optimizer | None = None) -> None:
        """Returns candidate ``index``'s logits to their initial 0, and their moments in ``optimizer`` to 0.

        For a candidate whose definition changed mid-run (``forward`` is cross-entropy until its noise matrix
        is estimated), what the decision learned of it no longer holds; it starts again where every logit
        started. The ``state`` network's shared hidden layer is kept; its output weights for the candidate
        are zeroed.
        """
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_losses:
            raise ValueError(f"forget: index must be an int in [0, {self.num_losses}); got {index!r}.")
        n = self.num_losses
        keep_one = tf.tensor_scatter_nd_update(tf.ones([n]), [[index]], [0.0])
        if self.kind == "static":
            masks = [(self.alpha, keep_one), (self.beta, keep_one)]
        else:
            keep_two = tf.concat([keep_one, keep_one], axis=0)  # the head's outputs: alpha then beta
            masks = [(self.head.kernel, keep_two[None, :]), (self.head.bias, keep_two)]
        for variable, keep in masks:
            slots = _optimizer_slots(optimizer, variable) if optimizer is not None else []
            for target in (variable, *slots):
                target.assign(target.value * tf.cast(keep, target.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(num_losses=self.num_losses, kind=self.kind, hidden_units=self.hidden_units)
        return config


def _optimizer_slots(optimizer: keras.optimizers.Optimizer, variable: keras.Variable) -> list:
    """The optimizer's per-weight state for ``variable`` (Adam's moments, SGD's momentum, ...).

    Keras names a slot ``<variable path with '/' as '_'>_<slot>`` with the variable's shape
    (``Optimizer.add_variable_from_reference``).
    """
    prefix = variable.path.replace("/", "_") + "_"
    return [v for v in optimizer.variables if v.name.startswith(prefix) and tuple(v.shape) == tuple(variable.shape)]


def create_decision_network(kind: str, num_losses: int, **kwargs: Any) -> DecisionNetwork:
    """Factory: fails loudly on an unknown kind."""
    return DecisionNetwork(num_losses, kind=kind, **kwargs)
