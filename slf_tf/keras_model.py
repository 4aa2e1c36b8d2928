"""``SLFModel``: Keras ``fit`` running the fused SLF step (main and decision update in one ``train_step``).

    model = keras.Sequential([...])                       # outputs logits
    slf_model = slf_tf.SLFModel(model, validation_data=(x_val, y_val))   # a clean held-out split
    slf_model.compile(optimizer="adam", loss=slf_tf.StochasticLoss([...], k=3), metrics=["accuracy"])
    slf_model.fit(x, y, epochs=5, validation_data=(x_val, y_val))

Each training batch of ``fit`` goes through :class:`slf_tf.train_step.TrainStep`:
the coefficients are sampled, the main network is updated, and the decision
network is updated by the validation hypergradient whose virtual step starts
from the same weights and uses the same ``c`` and the same batch -- one
forward/backward of the batch serves both (the trainer's step, exactly).
Evaluation (``evaluate``, ``predict``, ``fit``'s validation) uses the loss's
noise-free expected coefficients and changes no state.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from slf_tf import distributed, rng
from slf_tf.callbacks import Restart
from slf_tf.checks import check_finite_validation, warn_if_diverged, warn_if_same_data
from slf_tf.heads import as_step_loss
from slf_tf.keras_views import CompactProgbar
from slf_tf.train_step import DecisionSettings, TrainStep, optimizer_in_scope

__all__ = ["SLFModel"]

_MAX_VALIDATION_BYTES = 1 << 30  # held in memory as tensors


def _validation_arrays(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` arrays from a tuple or a finite dataset of ``(x, y)`` batches (held in memory)."""
    if data is None:
        raise ValueError(
            "SLFModel needs validation_data: a clean held-out split as (x, y) arrays or a finite tf.data.Dataset "
            "of (x, y) batches (never the test set). fit's validation_split cannot feed it; split your data first."
        )
    if isinstance(data, tf.data.Dataset):
        xs, ys = [], []
        for element in data:
            if not isinstance(element, tuple) or len(element) != 2:
                raise ValueError(f"validation_data must yield (x, y) batches; got {type(element).__name__}.")
            xs.append(np.asarray(element[0]))
            ys.append(np.asarray(element[1]))
        if not xs:
            raise ValueError("validation_data is an empty dataset.")
        batched = xs[0].ndim >= 2
        x, y = (np.concatenate(xs), np.concatenate(ys)) if batched else (np.stack(xs), np.stack(ys))
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = _arrays(data[0]), _arrays(data[1])
    elif isinstance(data, (tuple, list)) and len(data) == 3:
        raise ValueError(
            "validation_data got (x, y, sample_weight); the decision update weighs examples alike: pass (x, y)."
        )
    else:
        raise ValueError(f"validation_data must be (x, y) arrays or a dataset of (x, y); got {type(data).__name__}.")
    lengths = {len(a) for a in tf.nest.flatten((x, y))}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(
            f"validation_data needs as many labels as inputs (for every output), at least one; got lengths "
            f"{sorted(lengths)}."
        )
    size = sum(a.nbytes for a in tf.nest.flatten((x, y)))
    if size > _MAX_VALIDATION_BYTES:
        raise ValueError(f"validation_data holds {size / 2**30:.1f} GiB; SLFModel keeps it in memory (<= 1 GiB).")
    for labels in tf.nest.flatten(y):
        check_finite_validation(x, labels, "SLFModel(validation_data=...)")
    return x, y


def _arrays(value: Any) -> Any:
    """An array, or a dict / list of arrays (several inputs or outputs), as numpy arrays."""
    if isinstance(value, dict):
        return {k: np.asarray(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (np.ndarray, tf.Tensor)) for v in value):
        return [np.asarray(v) for v in value]
    return np.asarray(value)


def _one_replica(value: Any) -> Any:
    """This process's first replica's part of a distributed value (the value itself otherwise)."""
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value


@keras.saving.register_keras_serializable(package="slf_tf")
class SLFModel(keras.Model):
    """Wraps a model so that ``fit`` trains it with a combined loss and that loss's decision network.

    Args:
      network: the main network (a Keras model whose outputs are logits).
      validation_data: the clean held-out split the decision network learns from:
        ``(x, y)`` arrays or a finite dataset of ``(x, y)`` batches.
      decision_optimizer: a Keras optimizer or its name (default Adam at the strategy's decision learning
        rate: 0.02 for SLF, over ``hidden_units + 1`` with a ``state`` decision network; 1e-3 for
        meta_weight_net).
      val_batch_size: validation examples per decision update (global; drawn from
        ``(seed, step)``, so a resumed run draws the same ones).
      **settings: :class:`slf_tf.train_step.DecisionSettings` fields: ``every``,
        ``lookahead_lr``, ``virtual_step``, ``method``, ``entropy_weight``, ``fd_epsilon``.

    Compile it with a :class:`slf_tf.CombinedLoss` (any strategy) as ``loss``, or, for a model with several
    outputs, a dict (or list) of them: each output gets its own decision network, all learning from one
    lookahead whose validation objective is the sum of the outputs' validation losses.
    Save ``slf_model.network`` for inference; the wrapper's ``get_config`` leaves
    the validation data out.
    """

    def __init__(
        self,
        network: keras.Model,
        validation_data: Any = None,
        decision_optimizer: Any = None,
        val_batch_size: int = 128,
        name: str | None = None,
        **settings: Any,
    ):
        super().__init__(name=name or f"slf_{network.name}")
        self.network = network
        self.settings = DecisionSettings.from_keywords("SLFModel", **settings)
        if isinstance(val_batch_size, bool) or not isinstance(val_batch_size, int) or val_batch_size < 1:
            raise ValueError(f"val_batch_size must be an integer >= 1; got {val_batch_size!r}.")
        self.val_batch_size = val_batch_size
        self._validation = None
        if validation_data is not None:
            self.set_validation_data(validation_data)
        self.decision_optimizer = decision_optimizer  # made (or re-made) under the strategy before the first step
        self._step: TrainStep | None = None
        self._update_decision = True
        if network.built:  # no weights of its own: built when the network is (BackupAndRestore checks it)
            self.built = True

    def call(self, x, training=False):
        return self.network(x, training=training)

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, loss_weights: Any = None, **kwargs: Any) -> None:
        """Keras' ``compile``; ``loss`` is a slf_tf combined loss, or a dict / list of them, one per output
        (each output its own decision network: :class:`slf_tf.heads.HeadLosses`)."""
        slf_loss = as_step_loss(loss, loss_weights)
        super().compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights, **kwargs)
        self.slf_loss = slf_loss  # what the step trains: the loss, or every output's side by side
        self._step = None
        # The loss's state (step: the temperature schedule and the per-step seeds) and its decision network
        # as the model's own weights, so that .keras files, save_weights, BackupAndRestore, ModelCheckpoint
        # and EarlyStopping(restore_best_weights=True) keep and restore them with the main network.
        self.loss_state = list(slf_loss.state_variables) + list(slf_loss.decision_variables)
        if self.settings.uses_trust_region(slf_loss):  # only then, so that files saved without it still load
            self.loss_state.append(slf_loss.virtual_scale)
        pending, self._pending_loss_state = getattr(self, "_pending_loss_state", None), None
        if pending is not None:  # weights loaded before this compile (load_model(..., compile=False))
            super().load_own_variables(pending)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Recompiles a loaded model (``load_model``): the optimizer, and the combined loss with its state."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:  # the main optimizer trains the network only; its saved variables load next
            self.optimizer.build(self.network.trainable_variables)

    def load_own_variables(self, store: Any) -> None:
        """The loss's saved state; kept until ``compile`` if the model is not compiled yet."""
        if not (self._trainable_variables or self._non_trainable_variables) and len(store.keys()):
            self._pending_loss_state = {key: np.asarray(store[key]) for key in store.keys()}
            return
        super().load_own_variables(store)

    def _train_step_fn(self) -> TrainStep:
        if self._validation is None and self.slf_loss.needs_lookahead:
            raise ValueError(
                "This SLFModel has no validation_data (e.g. reloaded from a file); set_validation_data first."
            )
        if self._step is None:
            self.decision_optimizer = optimizer_in_scope(
                self.decision_optimizer, self.distribute_strategy, self.slf_loss.decision_learning_rate
            )
            self._step = TrainStep(
                self.network, self.slf_loss, self.optimizer, self.decision_optimizer, self.settings, task=None
            )
        return self._step

    def fit(self, *args: Any, **kwargs: Any):
        """Keras' ``fit`` with a compact progress bar (:class:`slf_tf.callbacks.CompactProgbar`, unless you pass
        a ``ProgbarLogger``); warns where the decision's split and fit's own could be mistaken for each other,
        and when the fit ends with non-finite weights or skipped steps."""
        arguments = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs).arguments
        arguments.pop("self")
        arguments.update(arguments.pop("kwargs", {}))
        if arguments.get("validation_split"):
            warnings.warn(
                f"fit(validation_split={arguments['validation_split']}) only sets what Keras reports as val_*; the "
                "decision network learns from SLFModel's validation_data, not from that split.",
                stacklevel=2,
            )
        x = arguments.get("x")
        if self._validation is not None and x is not None and not isinstance(x, tf.data.Dataset):
            x_val = tf.nest.map_structure(lambda a: a.numpy(), self._validation[0])
            warn_if_same_data(x, x_val, "SLFModel(validation_data=...)")
        callbacks = list(arguments.get("callbacks") or [])
        y = arguments.get("y")
        if x is not None and y is not None and not isinstance(x, tf.data.Dataset):
            for callback in callbacks:  # the noisy labels its `forward` estimate is calibrated to
                if isinstance(callback, Restart):
                    callback.fit_data = (x, y)
        quiet = arguments.get("verbose", "auto") == 0  # Keras adds no bar then: neither do we
        if not quiet and not any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
            callbacks.append(CompactProgbar())  # one slf_* key per candidate would make a 600-character line
        arguments["callbacks"] = callbacks
        loss = getattr(self, "slf_loss", None)
        before = (int(loss.step.numpy()), int(loss.skipped_steps.numpy())) if loss is not None else (0, 0)
        history = super().fit(**arguments)
        if loss is not None:
            steps, skipped = int(loss.step.numpy()) - before[0], int(loss.skipped_steps.numpy()) - before[1]
            warn_if_diverged(self.network.weights, skipped, steps, "SLFModel.fit")
        return history

    def set_validation_data(self, validation_data: Any) -> None:
        """Sets (or replaces) the clean held-out split of the decision update."""
        # Eager tensors: a traced step captures them by reference instead of copying them into its graph.
        self._validation = tf.nest.map_structure(tf.constant, _validation_arrays(validation_data))

    def _validation_batch(self, step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """This replica's share of the step's validation batch, drawn with replacement from ``(seed, step)``."""
        x, y = self._validation
        size = tf.nest.flatten(x)[0].shape[0]
        replicas = distributed.num_replicas()
        if self.val_batch_size % replicas:
            raise ValueError(
                f"val_batch_size={self.val_batch_size} must divide by the number of replicas ({replicas})."
            )
        per_replica = self.val_batch_size // replicas
        seed = rng.step_seed(self.slf_loss.seed, step, stream=2)
        idx = tf.random.stateless_uniform([self.val_batch_size], seed, 0, size, tf.int32)
        context = tf.distribute.get_replica_context()
        first = (0 if context is None else context.replica_id_in_sync_group) * per_replica
        mine = idx[first : first + per_replica]
        return tf.nest.map_structure(lambda a: tf.gather(a, mine), (x, y))

    def train_step(self, data, update_decision: bool | None = None):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        step = tf.convert_to_tensor(self.slf_loss.step)
        train_step = self._train_step_fn()
        if self._validation is not None:
            x_val, y_val = self._validation_batch(step)
        else:
            x_val = y_val = None
        decide = self._update_decision if update_decision is None else update_decision
        result = train_step(step, x, y, x_val, y_val, sample_weight, update_decision=decide)
        self._loss_tracker.update_state(result.metrics["loss"], sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
        logs = self.compute_metrics(x, y, result.predictions, sample_weight=sample_weight)
        logs.update(self.slf_loss.decision_summary())  # the decision, in the progress bar, History and TensorBoard
        if "hypergrad_norm" in result.metrics:
            logs["slf_hypergrad_norm"] = result.metrics["hypergrad_norm"]
        if "virtual_scale" in result.metrics:
            logs["slf_virtual_scale"] = result.metrics["virtual_scale"]
        return self._reducible(logs)

    def test_step(self, data):
        return self._reducible(super().test_step(data))

    def _reducible(self, logs: dict[str, Any]) -> dict[str, Any]:
        """Logs Keras can reduce across workers: under MultiWorkerMirroredStrategy Keras 3 reduces every log
        with ``reduce("MEAN", v, axis=0)``, which fails on scalars (tensorflow/tensorflow#72388)."""
        strategy = self.distribute_strategy
        multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
            strategy.extended._in_multi_worker_mode()
        )
        if not multi_worker:
            return logs
        return {k: tf.reshape(v, [1]) if tf.convert_to_tensor(v).shape.rank == 0 else v for k, v in logs.items()}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 builds from a batch it gets with strategy.reduce("MEAN", (x, y)), which
        # MultiWorkerMirroredStrategy cannot reduce (a tuple of PerReplica); one replica's batch has the shapes.
        if iterator is not None and data_batch is None and self._distribute_strategy is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(_one_replica, next(it))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def make_train_function(self, force: bool = False):
        """Builds the step (both optimizers) before any trace; with ``every > 1``, two traced train functions
        (with and without the decision update), as the trainer has."""
        if self.train_function is not None and not force:
            return self.train_function
        with self.distribute_strategy.scope():  # lazily built optimizers retrace, and break under MirroredStrategy
            self._train_step_fn()
        every = self.settings.every
        if every == 1:
            return super().make_train_function(force)
        if not hasattr(self, "_make_function"):
            raise NotImplementedError("every > 1 needs Keras 3's TensorFlow trainer (_make_function); use every=1.")
        full = self._make_function(functools.partial(self.train_step, update_decision=True))
        main = self._make_function(functools.partial(self.train_step, update_decision=False))
        calls = [int(self.slf_loss.step.numpy())]

        def train_function(iterator):
            fn = full if calls[0] % every == 0 else main
            calls[0] += 1
            return fn(iterator)

        self.train_function = train_function
        return train_function

    def get_config(self) -> dict[str, Any]:
        return {
            "network": keras.saving.serialize_keras_object(self.network),
            "val_batch_size": self.val_batch_size,
            "name": self.name,
            **{f.name: getattr(self.settings, f.name) for f in self.settings.__dataclass_fields__.values()},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SLFModel:
        config = dict(config)
        config.setdefault("trust_region", False)  # saved before the setting existed: trained without it
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        return cls(network, **config)
