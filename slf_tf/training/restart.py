"""Restart mode: retrain the main network with the decision learned so far (docs/design.md, "Committing in time").

The decision network often finds the right loss only after the candidates it
tried first have done damage (e.g. fitted noisy labels). A restart gives the
main network a second start with what the decision network has learned: at a
fixed fraction of the budget (``decision.restart_fraction``), or at the first
evaluation where the decision has committed, i.e. its largest noise-free
coefficient reaches ``decision.restart_at_commitment``, if that happens in the
first half of the budget. The main network restarts from fresh weights
(``restart_from="init"``) or from the best-validation checkpoint (``"best"``),
with a fresh main optimizer or that checkpoint's; the decision network goes on.
It happens at most once per run, and the total budget does not change. Strategies
whose weights are not learned by the hypergradient (fixed, uniform, random,
uncertainty, softadapt) never restart.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from absl import logging

__all__ = ["RESTART_FROM", "Restart"]

RESTART_FROM = ("init", "best")


class Restart:
    """When and how a run restarts its main network; ``restarted_at`` (-1: not yet) is checkpointed."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        d = trainer.config.decision
        self.fraction, self.commitment, self.source = d.restart_fraction, d.restart_at_commitment, d.restart_from
        # Only a decision learned from the validation hypergradient (slf, softmax, joint, meta_weight_net)
        # is worth a restart; l2rw learns nothing across steps.
        learned = trainer.loss.needs_lookahead and bool(trainer.loss.decision_variables)
        self.enabled = learned and bool(self.fraction or self.commitment)
        self.restarted_at = tf.Variable(-1, dtype=tf.int64, trainable=False, name="restarted_at")

    @property
    def done(self) -> bool:
        return int(self.restarted_at.numpy()) >= 0

    def due_before(self, step: int) -> bool:
        """The fixed-fraction trigger, checked before each step."""
        return self.enabled and not self.done and bool(self.fraction) and step == round(self.fraction * self._total)

    def due_after_evaluation(self, step: int) -> bool:
        """The commitment trigger, checked after each evaluation."""
        if not (self.enabled and self.commitment and not self.done and step <= self._total // 2):
            return False
        committed = float(tf.reduce_max(self.trainer.loss.expected_coefficients()))
        return committed >= self.commitment

    @property
    def _total(self) -> int:
        return self.trainer.config.num_train_steps

    def apply(self, step: int) -> str:
        """Restarts the main network (fresh, or from the best checkpoint); the decision network goes on.

        Returns what was done, in a sentence.
        """
        t = self.trainer
        best = t.checkpointer.best() if self.source == "best" else None
        if best is not None:
            checkpoint = tf.train.Checkpoint(model=t.model, main_optimizer=t.main_optimizer)
            checkpoint.restore(t.checkpointer.best_prefix()).expect_partial()
            how = f"from the best checkpoint (step {best['step']})"
        else:
            keras.utils.set_random_seed(t.config.seed + 1)
            with t.strategy.scope():
                fresh = t._create_model()  # noqa: SLF001 (the trainer's own model factory)
            for variable, value in zip(t.model.variables, fresh.variables, strict=True):
                variable.assign(value)
            for variable in t.main_optimizer.variables:  # iterations and moments; not the learning rate
                if variable is not getattr(t.main_optimizer, "_learning_rate", None):
                    variable.assign(tf.zeros_like(variable))
            how = "from fresh weights"
        self.restarted_at.assign(step)
        message = f"Step {step}: restarted the main network {how} with the decision learned so far."
        logging.info("%s", message)
        return message
