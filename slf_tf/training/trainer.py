"""The custom training loop of DESIGN 1.5: ``train_and_evaluate(config, workdir)``.

Per step (one ``tf.function`` under the configured ``tf.distribute`` strategy):
  1. sample ``c(v)`` with noise from ``(seed, step)``; forward the train batch;
     candidate losses (non-finite ones masked and counted);
  2. main tape: ``g = grad_w sum_i c_i L_i`` -> main optimizer (all-reduced);
  3. every ``decision_every`` steps, on a validation batch: the hypergradient of
     :mod:`slf_tf.hypergrad` -> decision optimizer. Its virtual step
     ``w' = w - eta g`` reuses the gradient of step 2 (one forward/backward of the
     train batch per step, not two: :func:`slf_tf.hypergrad.fused_step`).
Both optimizers are built before the first trace (lazily built ones retrace, and
under MirroredStrategy the hypergradient step then fails with a placeholder error).
Steps 1-2 and 1-3 are two traced functions, each traced once.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from slf_tf import data as data_lib
from slf_tf import distributed, hypergrad, models, rng
from slf_tf.stochastic_loss import CombinedLoss
from slf_tf.training import factories, input_pipeline, summaries

__all__ = ["Trainer", "format_report", "quiet_library_logs", "train_and_evaluate"]


def _tag(name: str) -> str:
    """A TensorBoard-safe tag for a candidate spec: ``focal(gamma=2.0)`` -> ``focal_gamma_2.0``."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_.]", "_", name)).strip("_")


def _flatten(config, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if hasattr(v, "items"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _prepare_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"Cannot write to workdir {workdir!r}: {e.strerror or e}.") from None


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks after each step (main thread only; else inert)."""

    def __init__(self):
        self.raised = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class Trainer:
    """Everything one run needs, built from a config; :meth:`run` trains, evaluates and exports."""

    def __init__(self, config, workdir: str, dataset: data_lib.Dataset | None = None):
        """Args: config (see configs/digits.py), workdir, and optionally a ready ``dataset``
        (used instead of ``config.data``, e.g. by benchmarks with synthetic inputs)."""
        factories.validate_config(config)
        self.config, self.workdir = config, workdir
        if config.get("deterministic", False):
            tf.config.experimental.enable_op_determinism()
        self.strategy = factories.create_distribution_strategy(config.strategy)
        self.is_chief = _is_chief(self.strategy)
        # Loaded before the workdir is touched, so a missing dataset fails fast and writes nothing.
        self.data = dataset if dataset is not None else data_lib.from_config(config.data, seed=config.seed)
        _prepare_workdir(workdir)
        self.replicas = self.strategy.num_replicas_in_sync
        self.global_batch = config.batch_size
        self.global_val_batch = config.slf.val_batch_size
        for name, b in (("batch_size", self.global_batch), ("slf.val_batch_size", self.global_val_batch)):
            if b % self.replicas:
                raise ValueError(f"config.{name}={b} must be divisible by the number of replicas ({self.replicas}).")
        self._build()

    # ---------------------------------------------------------------- build --

    def _build(self) -> None:
        c, d = self.config, self.data
        keras.utils.set_random_seed(c.seed)  # weight initialisation; sampling uses stateless seeds
        with self.strategy.scope():
            # Mixed precision applies to the main network only: the sampler, the decision
            # network and the hypergradient stay in float32 (the loss casts half outputs up).
            previous_policy = keras.config.dtype_policy()
            keras.config.set_dtype_policy(c.get("mixed_precision", "") or "float32")
            try:
                self.model = models.create_model(
                    c.model.name,
                    d.input_shape,
                    d.num_classes or 1,
                    image_shape=d.image_shape,
                    hidden_units=tuple(c.model.hidden_units),
                    filters=tuple(c.model.get("filters", (32, 64))),
                    dropout=c.model.get("dropout", 0.0),
                )
            finally:
                keras.config.set_dtype_policy(previous_policy)
            self.loss: CombinedLoss = factories.create_loss_from_config(c, d.task)
            o = c.optimizer
            self.opt_w = factories.create_optimizer(o.name, o.learning_rate, o.momentum, o.weight_decay, o.clipnorm)
            self.opt_v = factories.create_optimizer(
                c.slf.optimizer, c.slf.learning_rate, clipnorm=c.slf.get("clipnorm", 0.0)
            )
            self.opt_w.build(self.model.trainable_variables)
            if self.loss.decision_variables:
                self.opt_v.build(self.loss.decision_variables)
            n = self.loss.num_losses
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.window_probability = tf.Variable(tf.zeros([n]), trainable=False, name="window_probability")
            self.window_weight = tf.Variable(tf.zeros([n]), trainable=False, name="window_weight")
            self.window_steps = tf.Variable(0.0, trainable=False, name="window_steps")
            self.last_scores = tf.Variable(tf.zeros([n]), trainable=False, name="last_scores")
            self.last_hypergrad_norm = tf.Variable(0.0, trainable=False, name="last_hypergrad_norm")
        objects = {
            "step": self.step,
            "model": self.model,
            "opt_w": self.opt_w,
            "opt_v": self.opt_v,
            "loss_state": {f"s{i}": v for i, v in enumerate(self.loss.state_variables)},
            "decision": {f"v{i}": v for i, v in enumerate(self.loss.decision_variables)},
            "trainer_state": {
                "window_probability": self.window_probability,
                "window_weight": self.window_weight,
                "window_steps": self.window_steps,
                "last_scores": self.last_scores,
                "last_hypergrad_norm": self.last_hypergrad_norm,
            },
        }
        self.checkpoint = tf.train.Checkpoint(**objects)
        ckpt_dir = os.path.join(self.workdir, "checkpoints")
        if not self.is_chief:  # non-chief workers write to a scratch copy that is discarded
            ckpt_dir = os.path.join(self.workdir, f".worker_{self.strategy.cluster_resolver.task_id}", "checkpoints")
        self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir, max_to_keep=c.get("max_checkpoints", 3))
        self._main_step = tf.function(self._main_step_fn)
        self._full_step = tf.function(self._full_step_fn)
        self._eval_batch = tf.function(self._eval_batch_fn)

    # ----------------------------------------------------------------- step --

    def _main_replica(self, step, x, y):
        loss, model, gb = self.loss, self.model, self.global_batch
        seed = rng.step_seed(self.config.seed, step)
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            per_example, finite = loss.per_example_losses(y, pred)
            finite = distributed.all_true(finite)
            per_example = tf.where(finite[None], per_example, tf.zeros_like(per_example))
            sel = loss.select(seed, finite)
            c = tf.stop_gradient(tf.cast(sel.coefficients, per_example.dtype))
            objective = tf.reduce_sum(tf.linalg.matvec(per_example, c)) / gb
            if model.losses:
                objective += tf.add_n(model.losses) / self.replicas
        grads = tape.gradient(objective, model.trainable_variables)
        # Every candidate masked: the objective no longer depends on the weights.
        grads = [
            tf.zeros(v.shape, v.dtype) if g is None else g
            for g, v in zip(grads, model.trainable_variables, strict=True)
        ]
        skipped = hypergrad._apply_if_finite(self.opt_w, grads, model.trainable_variables)  # never NaN weights
        return self._main_outputs(y, pred, per_example, objective, skipped, sel, finite)

    def _main_outputs(self, y, pred, per_example, objective, skipped, sel, finite):
        """Per-replica partial metrics of the main step and the selection it used."""
        gb = self.global_batch
        raw = distributed.batch_mean(self.loss.bag_raw_means(per_example), gb)
        metrics = {"loss": objective, "candidate_losses": raw, "grad_skipped": skipped}
        if self.data.task == "classification":
            correct = tf.cast(tf.equal(tf.argmax(pred, -1, output_type=tf.int32), tf.cast(y, tf.int32)), tf.float32)
            metrics["accuracy"] = tf.reduce_sum(correct) / gb
        else:
            metrics["mae"] = tf.reduce_sum(tf.abs(tf.reshape(pred, [-1]) - tf.cast(y, pred.dtype))) / gb
        info = {"finite": finite, "coefficients": sel.coefficients, "gate": sel.gate, "weights": sel.weights}
        return metrics, info

    def _decision_kwargs(self, step) -> dict[str, Any]:
        c = self.config.slf
        return {
            "seed": rng.step_seed(self.config.seed, step),
            "lookahead_lr": c.lookahead_lr,
            "method": c.method,
            "entropy_weight": c.get("entropy_weight", 0.0),
            "fd_epsilon": c.get("fd_epsilon", 1e-3),
            "global_batch": self.global_batch,
            "global_val_batch": self.global_val_batch,
        }

    def _decision_replica(self, step, x, y, x_val, y_val):
        """A decision update on its own (update rules other than the hypergradient)."""
        return hypergrad.apply_decision_update(
            self.model, self.loss, self.opt_v, x, y, x_val, y_val, record=False, **self._decision_kwargs(step)
        )

    def _fused_replica(self, step, x, y, x_val, y_val):
        """Main step and hypergradient sharing one forward/backward of the train batch."""
        out, decision_metrics = hypergrad.fused_step(
            self.model, self.loss, self.opt_w, self.opt_v, x, y, x_val, y_val, **self._decision_kwargs(step)
        )
        metrics, info = self._main_outputs(
            y,
            out["pred"],
            out["per_example"],
            out["main_objective"],
            out["main_skipped"],
            out["selection"],
            out["finite"],
        )
        return metrics, info, decision_metrics

    def _first(self, value):
        return self.strategy.experimental_local_results(value)[0]

    def _after_main(self, per_replica_metrics, per_replica_info):
        s = self.strategy
        metrics = {k: s.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica_metrics.items()}
        metrics["grad_skipped"] = self._first(per_replica_metrics["grad_skipped"])
        info = {k: self._first(v) for k, v in per_replica_info.items()}
        info["losses"] = metrics["candidate_losses"]
        probs = tf.cast(self.loss.selection_probabilities(), tf.float32)
        updates = [
            self.loss.update_state(info),
            self.window_probability.assign_add(probs),
            self.window_weight.assign_add(tf.cast(info["weights"], tf.float32)),
            self.window_steps.assign_add(1.0),
            self.step.assign_add(1),
        ]
        with tf.control_dependencies(updates):
            return {k: tf.identity(v) for k, v in metrics.items()}

    def _main_step_fn(self, iterator):
        step, x, y, _, _ = next(iterator)
        m, info = self.strategy.run(self._main_replica, args=(step, x, y))
        return self._after_main(m, info)

    def _full_step_fn(self, iterator):
        step, x, y, x_val, y_val = next(iterator)
        if self.loss.update_rule == "hypergradient":
            m, info, d = self.strategy.run(self._fused_replica, args=(step, x, y, x_val, y_val))
            metrics = self._after_main(m, info)
        else:
            m, info = self.strategy.run(self._main_replica, args=(step, x, y))
            metrics = self._after_main(m, info)
            with tf.control_dependencies(list(metrics.values())):
                d = self.strategy.run(self._decision_replica, args=(step, x, y, x_val, y_val))
        d = {k: self._first(v) for k, v in d.items()}
        hypergrad.record_decision_metrics(self.loss, d)
        ops = [self.last_hypergrad_norm.assign(tf.cast(d["hypergrad_norm"], tf.float32))]
        if "scores" in d:
            ops.append(self.last_scores.assign(tf.cast(d["scores"], tf.float32)))
        with tf.control_dependencies(ops):
            return {**metrics, **{f"decision/{k}": tf.identity(v) for k, v in d.items() if k != "scores"}}

    # ----------------------------------------------------------------- eval --

    def _eval_batch_fn(self, x, y):
        pred = self.model(x, training=False)
        out = {"loss": tf.reduce_sum(self.loss.validation_loss(y, pred))}
        if self.data.task == "classification":
            out["accuracy"] = tf.reduce_sum(
                tf.cast(tf.equal(tf.argmax(pred, -1, output_type=tf.int32), tf.cast(y, tf.int32)), tf.float32)
            )
        else:
            err = tf.reshape(pred, [-1]) - tf.cast(y, pred.dtype)
            out["mae"] = tf.reduce_sum(tf.abs(err))
            out["mse"] = tf.reduce_sum(tf.square(err))
        return out

    def evaluate(self, split: str) -> dict[str, float]:
        """Mean validation-objective loss and accuracy (or MAE/MSE) over a whole split."""
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        totals: dict[str, float] = {}
        for i in range(0, len(x), 512):
            for k, v in self._eval_batch(tf.constant(x[i : i + 512]), tf.constant(y[i : i + 512])).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        return {k: v / len(x) for k, v in totals.items()}

    # ------------------------------------------------------------------ run --

    def restore(self) -> int:
        """Restores the latest checkpoint if there is one; returns the step to start from."""
        for path in reversed(self.manager.checkpoints):  # newest first; a corrupt one falls back
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (tf.errors.OpError, ValueError, AssertionError, IndexError, OSError) as e:
                logging.warning("Checkpoint %s is unreadable (%s); trying the previous one.", path, type(e).__name__)
                continue
            logging.info("Resumed from %s at step %d.", path, int(self.step.numpy()))
            break
        else:
            if self.manager.checkpoints:
                raise ValueError(f"No readable checkpoint in {self.manager.directory}; move it aside to start over.")
        return int(self.step.numpy())

    def _iterator(self, start: int):
        d, c = self.data, self.config
        return input_pipeline.distributed_batches(
            self.strategy,
            (d.x_train, d.y_train, d.x_val, d.y_val),
            batch_size=self.global_batch,
            val_batch_size=self.global_val_batch,
            seed=c.seed,
            start_step=start,
            num_steps=c.num_train_steps,
        )

    def _write_config(self) -> None:
        path = os.path.join(self.workdir, "config.json")
        if self.is_chief and not os.path.exists(path):
            with open(path, "w") as f:
                f.write(self.config.to_json_best_effort(indent=2))

    def _slf_scalars(self, step: int, last_counts: np.ndarray, last_step: int) -> dict[str, float]:
        loss = self.loss
        names = [_tag(n) for n in loss.names]
        probs = loss.selection_probabilities().numpy()
        counts = loss.selection_counts.numpy()
        freq = (counts - last_counts) / max(1, step - last_step)
        out: dict[str, float] = {}
        for i, n in enumerate(names):
            out[f"slf/loss/{n}"] = float(loss.last_losses.numpy()[i])
            out[f"slf/selection_probability/{n}"] = float(probs[i])
            out[f"slf/selection_frequency/{n}"] = float(freq[i])
            out[f"slf/weight/{n}"] = float(loss.last_weights.numpy()[i])
            out[f"slf/coefficient/{n}"] = float(loss.last_coefficients.numpy()[i])
            out[f"slf/score/{n}"] = float(self.last_scores.numpy()[i])
        temperature = loss.temperature() if hasattr(loss, "temperature") else tf.zeros([])
        out["slf/temperature"] = float(temperature)
        out["slf/hypergrad_norm"] = float(self.last_hypergrad_norm.numpy())
        out["slf/masked_count"] = float(loss.masked_counts.numpy().sum())
        out["slf/skipped_steps"] = float(loss.skipped_steps.numpy())
        return out

    def run(self) -> dict[str, Any]:
        """Trains to ``num_train_steps`` (resuming if the workdir holds a checkpoint), evaluates, exports."""
        c = self.config
        start = self.restore()
        self._write_config()
        writer = summaries.MetricWriter(self.workdir, enabled=self.is_chief)
        names = self.loss.names
        if start == 0:
            writer.hparams(_flatten(c))
            writer.layout(summaries.slf_layout(names))
        total = c.num_train_steps
        steps_per_epoch = max(1, len(self.data.x_train) // self.global_batch)
        decision_every = c.slf.decision_every
        learns = self.loss.update_rule != "none"
        logging.info("%s; %d replica(s); training steps %d..%d.", self.data.summary(), self.replicas, start, total)
        iterator = self._iterator(start)
        history_steps: list[int] = []
        history_probs: list[np.ndarray] = []
        last_counts, last_log_step, t_last = self.loss.selection_counts.numpy(), start, time.time()
        metrics: dict[str, Any] = {}
        killed_at = c.get("debug_kill_at_step", -1)
        preemption = _SigtermFlag()
        for step in range(start, total):
            if step % steps_per_epoch == 0:  # the "last epoch" window of the final table
                self.window_probability.assign(tf.zeros_like(self.window_probability))
                self.window_weight.assign(tf.zeros_like(self.window_weight))
                self.window_steps.assign(0.0)
            use_decision = learns and step % decision_every == 0
            metrics = (self._full_step if use_decision else self._main_step)(iterator)
            t = step + 1
            last = t == total
            if t % c.log_every_steps == 0 or last:
                now = time.time()
                rate = (t - last_log_step) / max(now - t_last, 1e-9)
                eta = (total - t) / max(rate, 1e-9)
                scalars = {f"train/{k}": v for k, v in metrics.items() if not k.startswith("decision/")}
                scalars.pop("train/candidate_losses", None)
                scalars.update(
                    {f"slf/{k[len('decision/') :]}": v for k, v in metrics.items() if k.startswith("decision/")}
                )
                scalars.update(self._slf_scalars(t, last_counts, last_log_step))
                scalars["train/steps_per_second"] = rate
                writer.scalars(t, scalars)
                alpha = self.loss.logits()[0] if hasattr(self.loss, "logits") else None
                if alpha is not None:
                    writer.histogram(t, "slf/alpha", alpha)
                history_steps.append(t)
                history_probs.append(self.loss.selection_probabilities().numpy())
                last_counts, last_log_step, t_last = self.loss.selection_counts.numpy(), t, now
                headline = "accuracy" if "train/accuracy" in scalars else "mae"
                logging.info(
                    "step %d/%d  loss %.4f  %s %.4f  %.1f steps/s  ETA %s",
                    t,
                    total,
                    float(scalars["train/loss"]),
                    headline,
                    float(scalars[f"train/{headline}"]),
                    rate,
                    time.strftime("%M:%S", time.gmtime(eta)) if eta < 3600 else f"{eta / 3600:.1f}h",
                )
            if t % c.eval_every_steps == 0 or last:
                ev = {f"eval/val_{k}": v for k, v in self.evaluate("val").items()}
                writer.scalars(t, ev)
                if len(history_steps) >= 1:
                    png = summaries.selection_heatmap_png(names, history_steps, np.stack(history_probs))
                    writer.image_png(t, "slf/selection_heatmap", png)
            if t % c.checkpoint_every_steps == 0 or last:
                self.manager.save(checkpoint_number=t)
            if t == killed_at:  # test hook: die as a preempted machine would, without cleanup
                writer.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            if preemption.raised and not last:  # SIGTERM: checkpoint this step and stop cleanly
                if t % c.checkpoint_every_steps:
                    self.manager.save(checkpoint_number=t)
                logging.warning("SIGTERM: saved a checkpoint at step %d; rerun with the same workdir to resume.", t)
                preemption.restore()
                writer.close()
                return {"preempted": True, "step": t}
        preemption.restore()
        results = self._finish(writer, total)
        writer.close()
        return results

    def _finish(self, writer: summaries.MetricWriter, step: int) -> dict[str, Any]:
        val, test = self.evaluate("val"), self.evaluate("test")
        writer.scalars(
            step,
            {
                **{f"eval/val_{k}": v for k, v in val.items()},
                **{f"eval/test_{k}": v for k, v in test.items()},
            },
        )
        steps = max(float(self.window_steps.numpy()), 1.0)
        choice = {
            name: {
                "selection_probability": float(p / steps),
                "weight": float(w / steps),
            }
            for name, p, w in zip(
                self.loss.names, self.window_probability.numpy(), self.window_weight.numpy(), strict=True
            )
        }
        results = {"step": step, "val": val, "test": test, "decision": choice, "strategy": self.loss.strategy}
        if self.is_chief:
            if self.config.get("export", True):
                self.export()
            with open(os.path.join(self.workdir, "results.json"), "w") as f:
                json.dump(results, f, indent=2)
        writer.flush()
        return results

    def export(self) -> tuple[str, str]:
        """Saves the main model as ``export/model.keras`` and a SavedModel ``export/saved_model``."""
        export_dir = os.path.join(self.workdir, "export")
        os.makedirs(export_dir, exist_ok=True)
        keras_path = os.path.join(export_dir, "model.keras")
        saved_path = os.path.join(export_dir, "saved_model")
        self.model.save(keras_path)
        self.model.export(saved_path, format="tf_saved_model", verbose=False)
        return keras_path, saved_path


def format_report(results: dict[str, Any], workdir: str) -> str:
    """The human summary printed at the end of a run."""
    test = results["test"]
    lines = []
    if "accuracy" in test:
        lines.append(f"Test accuracy: {test['accuracy']:.4f}   (test loss {test['loss']:.4f})")
    else:
        lines.append(f"Test MAE: {test['mae']:.4f}   test MSE: {test['mse']:.4f}   (standardised targets)")
    lines.append(f"Loss strategy: {results['strategy']}.  Over the last epoch the decision network chose:")
    width = max(len(n) for n in results["decision"]) + 2
    lines.append(f"  {'candidate loss':<{width}} {'mean P(selected)':>17} {'mean weight':>12}")
    for name, d in sorted(results["decision"].items(), key=lambda kv: -kv[1]["selection_probability"]):
        lines.append(f"  {name:<{width}} {d['selection_probability']:>17.3f} {d['weight']:>12.3f}")
    lines.append(f"TensorBoard:  tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")
    return "\n".join(lines)


def quiet_library_logs() -> None:
    """Hides TensorFlow's and Keras' own INFO lines (saver, SavedModel) so the progress lines stay readable."""
    import logging as py_logging

    def keep(record: py_logging.LogRecord) -> bool:
        noisy = f"{os.sep}tensorflow{os.sep}" in record.pathname or f"{os.sep}keras{os.sep}" in record.pathname
        return record.levelno >= py_logging.WARNING or not noisy

    py_logging.getLogger("absl").addFilter(keep)
    tf.get_logger().setLevel(py_logging.WARNING)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Trains and evaluates per ``config`` in ``workdir`` (resuming from its latest checkpoint)."""
    trainer = Trainer(config, workdir)
    results = trainer.run()
    if results.get("preempted"):
        return results
    if trainer.is_chief:
        print(format_report(results, workdir), flush=True)
    if math.isnan(results["test"].get("loss", 0.0)):
        logging.warning("The test loss is NaN.")
    return results
