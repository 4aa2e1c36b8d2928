"""Keras ``fit`` integration by callback: train a compiled combined loss's decision network during ``fit``.

    loss = slf_tf.StochasticLoss(["cross_entropy", "focal(gamma=2.0)", "mae"], k=3)
    model.compile(optimizer="adam", loss=loss)
    model.fit(x, y, epochs=5, callbacks=[slf_tf.callbacks.DecisionUpdate(train_data=(x, y), val_data=(x_val, y_val))])

While attached, the callback turns the loss's sampling on for training batches
(off for validation, ``evaluate`` and ``predict``), and after every
``every_n_batches`` batches applies one decision update
(:meth:`slf_tf.train_step.TrainStep.decide`): it re-draws the ``c`` of the batch
just taken (the same seed) and computes the validation hypergradient on a batch of
``train_data`` and a batch of ``val_data`` at the weights the main step produced.
The decision's keys join each epoch's logs; add :class:`CompactProgbar` for a progress
bar without them, :class:`SLFTensorBoard` for TensorBoard.
:class:`slf_tf.SLFModel` instead fuses the decision update into ``fit``'s own
step (one forward/backward, ``fit``'s own batches, the virtual step from the
weights the main step starts from): prefer it where you can wrap the model.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from slf_tf import transition as transition_lib
from slf_tf.checks import check_finite_validation, warn_if_diverged, warn_if_same_data
from slf_tf.keras_views import CompactProgbar, SLFTensorBoard
from slf_tf.stochastic_loss import CombinedLoss
from slf_tf.train_step import DecisionSettings, TrainStep, optimizer_in_scope

__all__ = ["CompactProgbar", "DecisionUpdate", "Restart", "SLFTensorBoard", "as_batches"]


def as_batches(data: Any, name: str, batch_size: int = 128, check_finite: bool = False) -> tf.data.Dataset:
    """``data`` as a dataset of ``(x, y)`` batches; a clear error (with the fix) for what cannot be one.

    ``check_finite`` refuses non-finite arrays (a validation split: one NaN freezes the decision).
    """
    if data is None:
        raise ValueError(
            f"{name} is required: a clean held-out split as an (x, y) tuple of arrays or a tf.data.Dataset of "
            "(x, y) batches. fit's validation_split cannot feed it (Keras splits it off inside fit); split "
            "your data first, e.g. with sklearn.model_selection.train_test_split."
        )
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not isinstance(spec, tuple) or len(spec) != 2:
            raise ValueError(f"{name} must yield (x, y) batches; its elements are {spec}.")
        first = tf.nest.flatten(spec[0])[0]
        if first.shape.rank is not None and first.shape.rank < 2:
            raise ValueError(f"{name} looks unbatched (x elements of shape {first.shape}); call .batch(n) on it.")
        return data
    if isinstance(data, (tuple, list)):
        if len(data) == 3:
            raise ValueError(
                f"{name} got an (x, y, sample_weight) tuple; the decision update weighs every validation example "
                "alike: pass (x, y)."
            )
        if len(data) == 2:
            x, y = data
            ys = {k: np.asarray(v) for k, v in y.items()} if isinstance(y, dict) else np.asarray(y)  # per output
            lengths = sorted({len(x), *(len(v) for v in tf.nest.flatten(ys))})
            if len(lengths) != 1:
                raise ValueError(f"{name}: x and y have different lengths ({lengths}).")
            if check_finite:
                for labels in tf.nest.flatten(ys):
                    check_finite_validation(x, labels, name)
            return tf.data.Dataset.from_tensor_slices((np.asarray(x), ys)).batch(batch_size)
    raise ValueError(
        f"{name} must be an (x, y) tuple of arrays or a tf.data.Dataset of (x, y); got {type(data).__name__}."
    )


class DecisionUpdate(keras.callbacks.Callback):
    """Trains the compiled loss's decision variables during ``fit`` (the SLF hypergradient, or its own rule).

    Args:
      train_data: ``(x, y)`` arrays or a dataset of ``(x, y)`` batches the updates
        draw training batches from (cycled); usually fit's training data.
      val_data: a clean, held-out split (never the test set): ``(x, y)`` or a dataset.
      optimizer: the decision optimizer, a Keras optimizer or its name (default Adam; a name or the
        default gets the strategy's decision learning rate, 0.02 for SLF with a static decision network).
      every_n_batches: update every n training batches (amortises the cost).
      loss: optional; if given it must be the loss the model was compiled with.
      **settings: :class:`slf_tf.train_step.DecisionSettings` fields (``lookahead_lr``,
        ``virtual_step``, ``method``, ``entropy_weight``, ``fd_epsilon``).
    """

    def __init__(
        self,
        train_data: Any = None,
        val_data: Any = None,
        optimizer: Any = None,
        every_n_batches: int = 1,
        loss: CombinedLoss | None = None,
        **settings: Any,
    ):
        super().__init__()
        if isinstance(train_data, CombinedLoss):
            raise ValueError(
                "DecisionUpdate takes the loss from the compiled model now: DecisionUpdate(train_data, val_data, "
                "optimizer); pass loss=... only to check it is the compiled one."
            )
        if isinstance(every_n_batches, bool) or not isinstance(every_n_batches, int) or every_n_batches < 1:
            raise ValueError(f"every_n_batches must be an integer >= 1; got {every_n_batches!r}.")
        self.settings = DecisionSettings.from_keywords("DecisionUpdate", every=every_n_batches, **settings)
        self.expected_loss = loss
        self.optimizer = optimizer  # made (or re-made) under the model's strategy when training starts
        if isinstance(train_data, tuple) and isinstance(val_data, tuple) and train_data and val_data:
            warn_if_same_data(train_data[0], val_data[0], "DecisionUpdate's val_data")
        self._train_iter = iter(as_batches(train_data, "DecisionUpdate train_data").repeat())
        self._val_iter = iter(as_batches(val_data, "DecisionUpdate val_data", check_finite=True).repeat())
        self._batches = 0
        self._step: TrainStep | None = None
        self._decide = None
        self._training = False
        self.history: list[dict[str, float]] = []

    @property
    def loss(self) -> CombinedLoss:
        return self._step.loss

    def _build(self) -> None:
        loss = getattr(self.model, "loss", None)
        if isinstance(loss, (dict, list, tuple)):
            raise ValueError(
                "DecisionUpdate takes a model compiled with one combined loss; for a loss per output use SLFModel "
                f"(each output gets its own decision); got {loss!r}."
            )
        if not isinstance(loss, CombinedLoss):
            raise ValueError(f"DecisionUpdate needs a model compiled with a slf_tf combined loss; got {loss!r}.")
        if self.expected_loss is not None and self.expected_loss is not loss:
            raise ValueError(
                "DecisionUpdate(loss=...) is not the loss the model was compiled with; the callback would train "
                "a decision network the model never uses. Drop loss=..., or compile with that loss."
            )
        if loss.reweights_from_lookahead:
            raise ValueError(
                f"The {loss.strategy!r} strategy weights the examples of the main step itself, which a callback "
                "cannot change (Keras' own step has already run). Wrap the model in slf_tf.SLFModel instead."
            )
        strategy = self.model.distribute_strategy  # every replica takes the whole batch: partials add up
        self.optimizer = optimizer_in_scope(self.optimizer, strategy, loss.decision_learning_rate)
        with strategy.scope():
            self._step = TrainStep(self.model, loss, self.model.optimizer, self.optimizer, self.settings)

        @tf.function
        def decide(step, x, y, x_val, y_val):
            out = strategy.run(self._step.decide, args=(step, x, y, x_val, y_val))
            return {k: strategy.experimental_local_results(v)[0] for k, v in out.items()}

        self._decide = decide

    def on_train_begin(self, logs=None):
        if self._step is None or self._step.model is not self.model:
            self._build()
        self._training = True
        self.loss.sampling.assign(True)

    def on_train_end(self, logs=None):
        self._training = False
        self.loss.sampling.assign(False)
        warn_if_diverged(self.model.weights, 0, self._batches, "fit with DecisionUpdate")

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if not self.loss.decision_variables or self._batches % self.settings.every:
            return
        x, y = next(self._train_iter)
        x_val, y_val = next(self._val_iter)
        metrics = self._decide(self.loss.step - 1, x, y, x_val, y_val)  # re-draws the step just taken
        self.history.append({k: float(tf.reduce_mean(v)) for k, v in metrics.items() if k != "scores"})

    def on_epoch_end(self, epoch, logs=None):
        """Adds the decision (``slf_p_*``, ``slf_w_*``, ``slf_temperature``, ``slf_hypergrad_norm``) to the epoch's
        logs, for History, CSVLogger and TensorBoard callbacks listed after this one."""
        if logs is None:
            return
        logs.update({k: float(v) for k, v in self.loss.decision_summary().items()})
        if self.history:
            logs["slf_hypergrad_norm"] = self.history[-1].get("hypergrad_norm", 0.0)

    def on_test_begin(self, logs=None):
        self.loss.sampling.assign(False)  # validation inside fit, or evaluate() with this callback

    def on_test_end(self, logs=None):
        self.loss.sampling.assign(self._training)

    def on_predict_begin(self, logs=None):
        self.loss.sampling.assign(False)

    def on_predict_end(self, logs=None):
        self.loss.sampling.assign(self._training)


class Restart(keras.callbacks.Callback):
    """The trainer's restart mode for ``SLFModel.fit``: at ``fraction`` of the fit's steps, the main network
    restarts from fresh weights (and a fresh optimizer state) with the decision learned so far.

    The decision network often settles on the right loss only after the candidates it tried first have
    done damage (docs/design.md, "Committing in time"); the restart gives the main network a second start
    under the settled decision, within the same budget. Only a decision learned from the validation
    hypergradient restarts (``slf``, ``softmax``, ``joint``, ``meta_weight_net``, ``glc``; one head or
    several); other losses only get the ``forward`` estimate below. Fresh weights are drawn with ``seed``.

    As in the trainer (``decision.restart_min_epochs``), there is no restart if fewer than ``min_epochs``
    of the fit's epochs come before it: in so few passes the network has fitted little label noise, and
    fresh weights would not converge in the rest of the fit. ``restarted_at`` is then -2.

    At the restart point, restarting or not, a ``forward`` candidate's noise matrix is estimated on the
    ``SLFModel``'s clean split from the network trained so far (``slf_tf.transition``; docs/design.md), its
    logits recalibrated to predict the noisy training labels ``train_data`` (``(x, y)`` arrays; a
    temperature, then matrix scaling), and the decision's logits for ``forward`` (learned while it was
    cross-entropy) return to 0 with their optimizer moments. ``SLFModel.fit(x, y)`` passes its arrays;
    fitting on a dataset, pass them here, or there is no recalibration (a less sharp matrix under robust
    losses). ``glc`` estimates as its paper does, without it.
    """

    def __init__(self, fraction: float = 0.4, seed: int = 0, min_epochs: float = 4.0, train_data: Any = None):
        super().__init__()
        if train_data is not None and not (isinstance(train_data, tuple) and len(train_data) == 2):
            raise ValueError(f"Restart train_data must be an (x, y) tuple of arrays; got {type(train_data).__name__}.")
        self.train_data = train_data
        self.fit_data = None  # set by SLFModel.fit(x, y): its arrays, when train_data is not given
        self.calibration = None  # of the last estimate (slf_tf.transition.Calibration)
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"Restart fraction must be in (0, 1); got {fraction!r}.")
        if not (isinstance(min_epochs, (int, float)) and 0.0 <= min_epochs < float("inf")):
            raise ValueError(f"Restart min_epochs must be a finite number >= 0; got {min_epochs!r}.")
        self.fraction, self.seed, self.min_epochs = float(fraction), int(seed), float(min_epochs)
        self.restarted_at = -1  # the step of the restart (-1: not yet; -2: skipped, too few epochs before it)
        self._at, self._step, self._restarts = None, 0, False

    def on_train_begin(self, logs=None):
        loss = getattr(self.model, "slf_loss", None)
        if loss is None:
            raise ValueError("Restart works with SLFModel (the fused step), whose network it restarts.")
        learned = (loss.needs_lookahead and bool(loss.decision_variables)) or getattr(loss, "restarts", False)
        self._restarts = learned
        estimates = getattr(loss, "transition", None) is not None  # every strategy gets the estimate
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if (learned or estimates) and steps and epochs and self.restarted_at == -1:
            self._at = round(self.fraction * steps * epochs)
            if learned and self.fraction * epochs < self.min_epochs:
                self.restarted_at = -2
                warnings.warn(
                    f"Restart skipped: {self.fraction * epochs:g} of the fit's {epochs} epochs come before it, "
                    f"fewer than min_epochs={self.min_epochs:g} (too few to have fitted label noise); "
                    "Restart(min_epochs=0) restarts anyway.",
                    stacklevel=2,
                )

    def on_train_batch_begin(self, batch, logs=None):
        if self._at is not None and self._step == self._at:
            self._estimate_transition()
        if self._at is not None and self._step == self._at and self.restarted_at == -1 and self._restarts:
            network = self.model.network
            keras.utils.set_random_seed(self.seed + 1)
            fresh = keras.models.clone_model(network)
            for variable, value in zip(network.weights, fresh.weights, strict=True):
                variable.assign(value)
            optimizer = self.model.optimizer
            for variable in optimizer.variables:  # iterations and moments; not the learning rate
                if variable is not getattr(optimizer, "_learning_rate", None):
                    variable.assign(tf.zeros_like(variable))
            self.restarted_at = self._step
        self._step += 1

    def _estimate_transition(self) -> None:
        """The ``forward`` candidate's noise matrix from the network before the restart, on the clean split
        (``slf_tf.transition``); also when the restart itself is skipped."""
        loss = self.model.slf_loss
        if getattr(loss, "transition", None) is None or self.model._validation is None:  # noqa: SLF001
            return
        x_val, y_val = self.model._validation  # noqa: SLF001 (SLFModel's clean split)
        noisy = None if getattr(loss, "restarts", False) else self.train_data or self.fit_data  # glc: as published
        matrix, self.calibration = transition_lib.from_network(
            self.model.network, x_val, y_val, loss.num_classes, loss.from_logits, noisy=noisy
        )
        loss.set_transition(matrix)
        loss.forget_candidate("forward", self.model.decision_optimizer)  # until now it was cross-entropy
