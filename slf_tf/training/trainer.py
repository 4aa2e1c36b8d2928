"""The custom training loop: ``train_and_evaluate(config, workdir)``.

Each step is :class:`slf_tf.train_step.TrainStep` under the configured
``tf.distribute`` strategy, traced once per variant (with and without the
decision update, which runs every ``config.decision.every`` steps). Around it,
periodic actions (cf. Flax's ``periodic_actions``): progress and TensorBoard
every ``log_every_steps``; evaluation on the clean validation split every
``eval_every_steps``, keeping the best-validation checkpoint and stopping early
after ``early_stopping_patience`` evaluations without improvement; a checkpoint
every ``checkpoint_every_steps``; a checkpoint and a clean exit on SIGTERM.

What is around the loop lives apart: :mod:`.preemption` (SIGTERM, the peer
watchdog), :mod:`.progress` (progress lines, the end-of-run report),
:mod:`.export` (the exported models), :mod:`.workdir` and :mod:`.checkpointing`.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from slf_tf import data as data_lib
from slf_tf import metrics as metrics_lib
from slf_tf import models, summaries
from slf_tf.train_step import TrainStep
from slf_tf.training import checkpointing, config_checks, factories, input_pipeline, preemption
from slf_tf.training import export as export_lib
from slf_tf.training import progress as progress_lib
from slf_tf.training import restart as restart_lib
from slf_tf.training import workdir as workdir_lib

__all__ = ["Trainer", "train_and_evaluate"]


def _flatten(config, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if hasattr(v, "items") else {key: v})
    return out


def _warn_degenerate_sizes(data: data_lib.Dataset, config) -> None:
    """Warns about data sizes that make a run meaningless without making it fail."""
    n, b = len(data.x_train), config.batch_size
    if n < 10:
        logging.warning("Only %d training example(s): the run can memorise them and little else.", n)
    if b > n:
        logging.warning("batch_size=%d is %.0fx the %d training examples: every batch repeats examples.", b, b / n, n)
    if config.decision.val_batch_size > len(data.x_val):
        logging.warning(
            "decision.val_batch_size=%d exceeds the %d validation examples: each validation batch repeats them.",
            config.decision.val_batch_size,
            len(data.x_val),
        )


class _Periodic:
    """Runs ``action(step, metrics)`` when ``step % every == 0`` or at the last step; the action may ask to stop."""

    def __init__(self, every: int, action: Callable[[int, dict], bool | None]):
        self.every, self.action = every, action

    def __call__(self, step: int, last: bool, metrics: dict) -> bool:
        return bool(self.action(step, metrics)) if step % self.every == 0 or last else False


class Trainer:
    """Everything one run needs, built from a config; :meth:`run` trains, evaluates and exports.

    Args:
      config: see configs/digits.py.
      workdir: checkpoints, metrics, TensorBoard and exports go here; a rerun resumes.
      dataset: a ready :class:`slf_tf.data.Dataset` instead of ``config.data``
        (e.g. benchmarks with synthetic inputs).
      new_run: if the workdir holds a run with another config, move it into
        ``previous_runs/`` and start afresh (else that refuses; see :mod:`.workdir`).
    """

    def __init__(self, config, workdir: str, dataset: data_lib.Dataset | None = None, new_run: bool = False):
        config_checks.validate_config(config)
        self.config, self.workdir = config, workdir
        if config.get("deterministic", False):
            tf.config.experimental.enable_op_determinism()
        multi_worker = config.distribution == "multi_worker"
        self._watchdog = (
            preemption.PeerWatchdog(config.multi_worker_timeout_s, min(30.0, config.multi_worker_timeout_s or 30.0))
            if multi_worker
            else None
        )
        self.strategy = factories.create_distribution_strategy(config.distribution)
        self.is_chief = preemption.is_chief(self.strategy)
        # Loaded before the workdir is touched, so a missing dataset fails fast and writes nothing.
        self.data = dataset if dataset is not None else data_lib.from_config(config.data, seed=config.seed)
        self.best_metric = factories.best_metric(config, self.data.task, self.data.outputs)
        _warn_degenerate_sizes(self.data, config)
        self._claim_workdir(new_run)
        self.replicas = self.strategy.num_replicas_in_sync
        for name, b in (("batch_size", config.batch_size), ("decision.val_batch_size", config.decision.val_batch_size)):
            if b % self.replicas:
                raise ValueError(f"config.{name}={b} must be divisible by the number of replicas ({self.replicas}).")
        self._build()

    # ---------------------------------------------------------------- build --

    def _claim_workdir(self, new_run: bool) -> None:
        """Prepares and locks the workdir (a worker's own scratch folder), and checks the run's identity."""
        self.files = workdir_lib.Workdir(self.workdir)
        self.files.prepare()
        scratch = self.files if self.is_chief else workdir_lib.Workdir(self._scratch_dir())
        scratch.prepare()
        scratch.lock()
        self._lock = scratch
        atexit.register(scratch.unlock)
        if self.is_chief:
            has_checkpoints = bool(checkpointing.list_checkpoints(self.files.join("checkpoints")))
            self.files.check_identity(self.config, has_checkpoints, new_run)

    def _scratch_dir(self) -> str:
        return os.path.join(self.workdir, f".worker_{self.strategy.cluster_resolver.task_id}")

    def _build(self) -> None:
        c, d = self.config, self.data
        keras.utils.set_random_seed(c.seed)  # weight initialisation; sampling uses stateless seeds
        with self.strategy.scope():
            self.model = self._create_model()
            # HeadLosses for several outputs
            self.loss = factories.create_loss_from_config(c, d.task, d.outputs, d.num_classes)
            o, v = c.optimizer, c.decision
            self.main_optimizer = factories.create_optimizer(
                o.name, o.learning_rate, o.momentum, o.weight_decay, o.clipnorm
            )
            decision_lr = v.learning_rate or self.loss.decision_learning_rate  # 0: the strategy's own
            self.decision_optimizer = factories.create_optimizer(v.optimizer, decision_lr, clipnorm=v.clipnorm)
            self.train_step = TrainStep(  # builds both optimizers before the first trace
                self.model,
                self.loss,
                self.main_optimizer,
                self.decision_optimizer,
                factories.decision_settings(c),
                task=d.outputs or d.task,
                global_batch=c.batch_size,
                global_val_batch=v.val_batch_size,
            )
            # The loss's running totals and the step at the start of the epoch (the "last epoch" table).
            self.epoch_start = tf.Variable(tf.zeros([4 * self.loss.num_losses + 2]), trainable=False)
            self.restart = restart_lib.Restart(self)
            if getattr(self.loss, "transition", None) is not None and not self.restart.estimates:
                raise ValueError(
                    "The 'forward' candidate's noise matrix is estimated at the restart point, which this run lacks: "
                    f"decision.restart_fraction={c.decision.restart_fraction!r} (set a fraction in (0, 1), or "
                    "leave 'forward' out of loss.candidates)."
                )
        objects = {
            "model": self.model,
            "main_optimizer": self.main_optimizer,
            "decision_optimizer": self.decision_optimizer,
            "loss_state": {f"s{i}": v for i, v in enumerate(self.loss.state_variables)},
            "decision": {f"v{i}": v for i, v in enumerate(self.loss.decision_variables)},
            "epoch_start": self.epoch_start,
            "restarted_at": self.restart.restarted_at,
            "virtual_scale": self.loss.virtual_scale,  # optional: checkpoints from before it still resume
        }
        # Non-chief workers write to a scratch copy that is discarded.
        ckpt_dir = os.path.join(self.workdir if self.is_chief else self._scratch_dir(), "checkpoints")
        self.checkpointer = checkpointing.Checkpointer(
            objects, ckpt_dir, c.max_checkpoints, optional=("virtual_scale",)
        )
        self._steps = {flag: tf.function(self._distributed_step(flag)) for flag in (True, False)}
        spec = lambda a: tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype))  # noqa: E731
        signature = (spec(d.x_train), tf.nest.map_structure(spec, d.y_train))  # y: a dict with several outputs
        self._eval_batch = tf.function(self._eval_batch_fn, input_signature=signature)  # one trace per run

    def _create_model(self) -> keras.Model:
        c, d = self.config, self.data
        # Mixed precision applies to the main network only: the sampler, the decision
        # network and the hypergradient stay in float32 (the loss casts half outputs up).
        previous_policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy(c.get("mixed_precision", "") or "float32")
        try:
            return models.create_model(
                c.model.name,
                d.input_shape,
                d.num_classes or 1,
                image_shape=d.image_shape,
                hidden_units=tuple(c.model.hidden_units),
                filters=tuple(c.model.get("filters", (32, 64))),
                dropout=c.model.get("dropout", 0.0),
                outputs=self._output_heads(),
            )
        finally:
            keras.config.set_dtype_policy(previous_policy)

    def _output_heads(self) -> dict[str, tuple[str, int]] | None:
        """The model's heads, ``{output: (kind, size)}``, for a dataset with several outputs (else None)."""
        d = self.data
        if not d.outputs:
            return None
        sizes = {"classification": d.num_classes, "box": 4}
        return {output: (kind, sizes.get(kind, 1)) for output, kind in d.outputs.items()}

    def _distributed_step(self, update_decision: bool):
        replica_step = functools.partial(self.train_step, update_decision=update_decision)
        if self.config.get("jit_compile", False):  # XLA: faster for small MLPs on CPU, slower for the CNN
            replica_step = tf.function(replica_step, jit_compile=True)

        def step_fn(iterator):
            step, x, y, x_val, y_val = next(iterator)
            out = self.strategy.run(replica_step, args=(step, x, y, x_val, y_val))
            return {k: self.strategy.experimental_local_results(v)[0] for k, v in out.metrics.items()}  # global

        return step_fn

    @property
    def step(self) -> int:
        """Training steps taken (the loss's step counter; also the data position)."""
        return int(self.loss.step.numpy())

    # ----------------------------------------------------------------- eval --

    def _eval_batch_fn(self, x, y):
        pred = self.model(x, training=False)
        d = self.data
        sums = metrics_lib.output_sums(d.outputs, y, pred) if d.outputs else metrics_lib.task_sums(d.task, y, pred)
        return {"loss": tf.reduce_sum(self.loss.validation_loss(y, pred)), **sums}

    def evaluate(self, split: str) -> dict[str, float]:
        """Mean validation-objective loss and accuracy (or MAE/MSE; ``<output>/<metric>`` per output) over a split.

        ``val`` is the selection split where ``data.selection_fraction`` holds one out (the part of the clean
        split no training step reads), else the whole validation split.
        """
        d = self.data
        if split == "val" and d.x_select is not None:
            x, y = d.x_select, d.y_select
        else:
            x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
        totals: dict[str, float] = {}
        for i in range(0, len(x), 512):
            batch = tf.nest.map_structure(lambda a, i=i: a[i : i + 512], y)
            for k, v in self._eval_batch(x[i : i + 512], batch).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        means = {k: v / len(x) for k, v in totals.items()}
        if self.data.outputs:
            means["score"] = metrics_lib.headline_score(means, self.data.outputs)
        return means

    # ------------------------------------------------------------------ run --

    def _iterator(self, start: int):
        d, c = self.data, self.config
        return input_pipeline.distributed_batches(
            self.strategy,
            (d.x_train, d.y_train, d.x_val, d.y_val),
            batch_size=c.batch_size,
            val_batch_size=c.decision.val_batch_size,
            seed=c.seed,
            start_step=start,
            num_steps=c.num_train_steps,
        )

    def run(self) -> dict[str, Any]:
        """Trains to ``num_train_steps`` (resuming if the workdir holds a checkpoint), evaluates, exports."""
        try:
            return self._run()
        finally:
            if self._watchdog is not None:
                self._watchdog.stop()
            self._lock.unlock()

    def _run(self) -> dict[str, Any]:
        c = self.config
        self.checkpointer.restore()
        start, total = self.step, c.num_train_steps
        finished = start >= total or self._patience_exhausted(start)
        if self.is_chief:
            self.files.check_steps(start, total)
            self.files.trim_metrics(start)
            if finished:
                self.files.drop_final_evaluation(start)  # the re-evaluation writes its row again
            self.files.write_config(c)
        candidates = dict(zip(self.loss.tags, self.loss.names, strict=True))
        writer = summaries.MetricWriter(self.workdir, enabled=self.is_chief, candidates=candidates)
        if start == 0:
            trial = os.path.basename(os.path.abspath(self.workdir))
            headlines = metrics_lib.headlines(self.data.task, self.data.outputs)
            writer.hparams(_flatten(c), trial_id=trial, headlines=headlines)
            writer.layout(summaries.slf_layout(headlines, trust_region=self.train_step.trust_region))
        if finished:  # re-evaluate
            return self._finish(writer, start)
        logging.info("%s; %d replica(s); training steps %d..%d.", self.data.summary(), self.replicas, start, total)
        progress = progress_lib.Progress(self, writer, start)
        actions = [
            _Periodic(c.log_every_steps, progress),
            _Periodic(c.eval_every_steps, lambda t, _: self._evaluate_and_keep_best(writer, t, progress)),
            _Periodic(c.checkpoint_every_steps, self._save),
        ]
        steps_per_epoch = max(1, len(self.data.x_train) // c.batch_size)
        iterator, sigterm, t, stop, latest = self._iterator(start), preemption.SigtermFlag(), start, False, {}
        try:
            for step in range(start, total):
                if self.restart.due_before(step):
                    self._restart(writer, step)
                elif self.restart.estimate_due(step):  # a strategy that never restarts still gets the estimate
                    writer.text(step, "slf/restart", self.restart.estimate_transition(step))
                if step % steps_per_epoch == 0:  # where the "last epoch" window of the final table starts
                    self.epoch_start.assign(tf.concat([self.loss.totals, [float(step)]], axis=0))
                latest.update(self._steps[step % c.decision.every == 0](iterator))  # keeps the last decision's
                if self._watchdog is not None:  # the first step ran its collectives: every peer is there
                    self._watchdog.stop()
                t = step + 1
                stop = any([action(t, t == total, latest) for action in actions])
                if stop or sigterm.raised:
                    break
            if t < total and t % c.checkpoint_every_steps:  # stopped early or preempted: keep this step
                self.checkpointer.save(t)
            if sigterm.raised and t < total:
                logging.warning("SIGTERM: saved a checkpoint at step %d; rerun with the same workdir to resume.", t)
                writer.close()
                return {"preempted": True, "step": t}
            results = self._finish(writer, t)  # SIGTERM here waits for the final evaluation to end
            if sigterm.raised:
                logging.warning("SIGTERM during the final evaluation: finished it first; the run is complete.")
            return results
        finally:
            sigterm.restore()

    def _restart(self, writer: summaries.MetricWriter, step: int) -> None:
        """Restarts the main network (``restart.py``), unless too few epochs; says which in TensorBoard."""
        estimated = self.restart.estimate_transition(step)  # before the network it reads is replaced
        reason = self.restart.skip_reason(step)
        done = self.restart.skip(step, reason) if reason else self.restart.apply(step)
        writer.text(step, "slf/restart", f"{estimated} {done}" if estimated else done)

    def _save(self, step: int, metrics: dict) -> None:
        del metrics
        self.checkpointer.save(step)

    # ------------------------------------------------- best checkpoint, early stop --

    def _improves(self, val: dict[str, float], best: dict[str, Any] | None) -> bool:
        value = val[self.best_metric.removeprefix("val_")]
        if not (math.isfinite(value) and math.isfinite(val["loss"])):  # a diverged model is never the best
            return False
        if best is None:
            return True
        old = best["val"][self.best_metric.removeprefix("val_")]
        return value > old if metrics_lib.higher_is_better(self.best_metric) else value < old

    def _patience_exhausted(self, step: int) -> bool:
        patience, best = self.config.early_stopping_patience, self.checkpointer.best()
        if not patience or not self.best_metric or best is None:
            return False
        return (step - best["step"]) // self.config.eval_every_steps >= patience

    def _evaluate_and_keep_best(
        self, writer: summaries.MetricWriter, step: int, progress: progress_lib.Progress
    ) -> bool:
        """Evaluates on the clean validation split; saves a new best; returns True to stop early."""
        val = self.evaluate("val")
        scalars = {f"eval/val_{k}": v for k, v in val.items()}
        if self.best_metric and self.is_chief and self._improves(val, self.checkpointer.best()):
            test = self.evaluate("test")
            self.checkpointer.save_best(step, {"metric": self.best_metric, "val": val, "test": test})
            scalars.update({f"eval/best_{k}": v for k, v in val.items()})
            scalars.update({f"eval/best_test_{k}": v for k, v in test.items()})
        writer.scalars(step, scalars)
        if progress.steps:
            heatmap = summaries.selection_heatmap_png(
                self.loss.names,
                progress.steps,
                np.stack(progress.probabilities),
                int(self.restart.restarted_at.numpy()),
            )
            writer.image_png(step, "slf/selection_heatmap", heatmap)
        if self.restart.due_after_evaluation(step):
            self._restart(writer, step)
        if self._patience_exhausted(step):
            logging.info(
                "Early stopping at step %d: %s has not improved for %d evaluations.",
                step,
                self.best_metric,
                self.config.early_stopping_patience,
            )
            return True
        return False

    # --------------------------------------------------------------- finish --

    def _last_epoch_choice(self) -> dict[str, dict[str, float]]:
        n = self.loss.num_losses
        start = self.epoch_start.numpy()
        steps = max(float(self.step) - start[-1], 1.0)
        window = (self.loss.totals.numpy()[:-1] - start[:-2]) / steps
        return {
            name: {"selection_probability": float(window[n + i]), "weight": float(window[2 * n + i])}
            for i, name in enumerate(self.loss.names)
        }

    def _finish(self, writer: summaries.MetricWriter, step: int) -> dict[str, Any]:
        val, test = self.evaluate("val"), self.evaluate("test")
        writer.scalars(
            step, {**{f"eval/val_{k}": v for k, v in val.items()}, **{f"eval/test_{k}": v for k, v in test.items()}}
        )
        results = {
            "step": step,
            "val": val,
            "test": test,
            "best": self.checkpointer.best(),
            "stopped_early": step < self.config.num_train_steps,
            "restarted_at": int(self.restart.restarted_at.numpy()),
            "decision": self._last_epoch_choice(),
            "strategy": self.loss.strategy,
            "diverged": self._divergence(step, val, test),
        }
        if self.is_chief:
            if self.config.export and not results["diverged"]:
                self.export()
            self.files.write_results(results)
        writer.close()
        return results

    def _divergence(self, step: int, val: dict[str, float], test: dict[str, float]) -> str | None:
        """What says the run diverged (a non-finite model, or non-finite losses at the end), else None."""
        finite_weights = all(np.isfinite(w.numpy()).all() for w in self.model.weights)
        if finite_weights and math.isfinite(val["loss"]) and math.isfinite(test["loss"]):
            return None
        what = "model's weights are not finite" if not finite_weights else "model's outputs give non-finite losses"
        skipped = int(self.loss.skipped_steps.numpy())
        return (
            f"The run diverged: at step {step} the {what} (validation loss {val['loss']}, test loss {test['loss']}); "
            f"{skipped} of {step} steps had no finite loss and were skipped. Nothing was exported. Lower "
            f"optimizer.learning_rate (now {self.config.optimizer.learning_rate:g}) or set optimizer.clipnorm, "
            "and start afresh with --new_run."
        )

    def export(self) -> tuple[str, str]:
        """Saves the main model as ``export/model.keras`` + ``export/saved_model``, and the best as ``export/best/``.

        Without a best checkpoint an ``export/best/`` of an earlier evaluation is moved aside (kept, renamed),
        so that it is never taken for this run's best.
        """
        self.files.check_links("export")  # never write through a link out of the workdir
        paths = export_lib.export_model(self.model, os.path.join(self.workdir, "export"))
        best_export = self.files.join("export", "best")
        if self.checkpointer.best() is not None:
            export_lib.export_best(self.model, self.checkpointer.best_directory, best_export)
        elif os.path.isdir(best_export):
            stale = f"{best_export}.stale-{time.strftime('%Y%m%dT%H%M%S')}"
            os.replace(best_export, stale)
            logging.warning("No best checkpoint: moved the earlier %s to %s.", best_export, stale)
        return paths


def train_and_evaluate(config, workdir: str, new_run: bool = False) -> dict[str, Any]:
    """Trains and evaluates per ``config`` in ``workdir`` (resuming from its latest checkpoint).

    Raises ``ValueError`` saying why if the run diverged (``results.json`` records it; nothing is exported).
    """
    trainer = Trainer(config, workdir, new_run=new_run)
    results = trainer.run()
    if results.get("preempted"):
        return results
    if results["diverged"]:
        raise ValueError(results["diverged"])
    if trainer.is_chief:
        print(progress_lib.format_report(results, workdir), flush=True)
    return results
