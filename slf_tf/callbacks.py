"""Keras ``fit`` integration: train the decision network of a combined loss during ``model.fit``.

    loss = slf_tf.StochasticLoss(["cross_entropy", "focal(gamma=2.0)", "mae"], k=3)
    model.compile(optimizer="adam", loss=loss)
    model.fit(train_ds, epochs=5,
              callbacks=[slf_tf.callbacks.DecisionUpdate(loss, train_ds, val_ds, "adam")])

After every ``every_n_batches`` training batches the callback takes one batch from
``train_data`` and one from ``val_data`` (each cycled) and applies one decision
update (:func:`slf_tf.hypergrad.apply_decision_update`). During ``evaluate`` /
validation the loss switches to its noise-free expected coefficients.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from slf_tf import hypergrad, rng
from slf_tf.stochastic_loss import CombinedLoss

__all__ = ["DecisionUpdate"]


def _as_dataset(data: Any) -> tf.data.Dataset:
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(128)
    raise ValueError(
        "DecisionUpdate data must be a tf.data.Dataset of (x, y) batches or an (x, y) tuple; "
        f"got {type(data).__name__}."
    )


class DecisionUpdate(keras.callbacks.Callback):
    """Trains ``loss.decision_variables`` during ``fit`` (the SLF hypergradient, or the loss's own rule).

    Args:
      loss: the combined loss compiled into the model.
      train_data, val_data: ``tf.data.Dataset`` of ``(x, y)`` batches, or ``(x, y)``
        arrays (batched by 128). Repeated as needed.
      optimizer: a Keras optimizer or its name (default Adam, lr 0.01).
      every_n_batches: update every n training batches (amortises the cost).
      lookahead_lr: eta of the virtual SGD step.
      method: ``exact`` or ``finite_difference``.
      entropy_weight: exploration bonus on ``softmax(alpha)``.
    """

    def __init__(
        self,
        loss: CombinedLoss,
        train_data: Any,
        val_data: Any,
        optimizer: Any = None,
        every_n_batches: int = 1,
        lookahead_lr: float = 0.05,
        method: str = "exact",
        entropy_weight: float = 0.0,
    ):
        super().__init__()
        if not isinstance(loss, CombinedLoss):
            raise ValueError(f"DecisionUpdate needs a slf_tf combined loss; got {type(loss).__name__}.")
        if isinstance(every_n_batches, bool) or not isinstance(every_n_batches, int) or every_n_batches < 1:
            raise ValueError(f"every_n_batches must be an integer >= 1; got {every_n_batches!r}.")
        hypergrad._check_method(method)
        self.loss = loss
        self.every_n_batches = every_n_batches
        self.lookahead_lr, self.method, self.entropy_weight = lookahead_lr, method, entropy_weight
        if optimizer is None:
            optimizer = keras.optimizers.Adam(0.01)
        self.optimizer = keras.optimizers.get(optimizer) if isinstance(optimizer, str) else optimizer
        self._train_iter = iter(_as_dataset(train_data).repeat())
        self._val_iter = iter(_as_dataset(val_data).repeat())
        self._batches = 0
        self._step_fn = None
        self.history: list[dict[str, float]] = []

    def _build(self) -> None:
        if self.loss.decision_variables:
            self.optimizer.build(self.loss.decision_variables)  # before the first trace: no retracing
        model, loss = self.model, self.loss

        @tf.function
        def step(x, y, x_val, y_val):
            return hypergrad.apply_decision_update(
                model,
                loss,
                self.optimizer,
                x,
                y,
                x_val,
                y_val,
                seed=rng.step_seed(loss.seed, loss.step.value, stream=1),
                lookahead_lr=self.lookahead_lr,
                method=self.method,
                entropy_weight=self.entropy_weight,
            )

        self._step_fn = step

    def on_train_begin(self, logs=None):
        if self._step_fn is None:
            self._build()
        self.loss.sampling.assign(True)

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.loss.update_rule == "none" or self._batches % self.every_n_batches:
            return
        x, y = next(self._train_iter)
        x_val, y_val = next(self._val_iter)
        metrics = self._step_fn(x, y, x_val, y_val)
        self.history.append({k: float(tf.reduce_mean(v)) for k, v in metrics.items() if k != "scores"})

    def on_test_begin(self, logs=None):
        self.loss.sampling.assign(False)

    def on_test_end(self, logs=None):
        self.loss.sampling.assign(True)

    def on_predict_begin(self, logs=None):
        self.loss.sampling.assign(False)
