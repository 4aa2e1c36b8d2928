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
uncertainty, softadapt, l2rw) never restart.

A due restart is skipped if the main network has seen the training split fewer
than ``decision.restart_min_epochs`` times by then: in so few passes it has
fitted little label noise, and fresh weights would not train to convergence in
the rest of the budget (docs/design.md, "Committing in time").

At the restart point, restarting or not, a ``forward`` candidate's noise matrix is
estimated on the clean split from the network trained so far, its logits recalibrated
to predict the noisy training labels (a temperature, then matrix scaling:
``slf_tf.transition``; docs/design.md, "What closes it"). A learned decision then forgets
what it learned of ``forward`` while it was cross-entropy: its logits and their optimizer
moments return to 0 (``DecisionNetwork.forget``). Strategies that never restart
get the estimate at the restart point all the same. ``glc`` restarts for the estimate
alone, with no decision, and estimates as its paper does (no recalibration).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from slf_tf import transition as transition_lib

__all__ = ["RESTART_FROM", "Restart"]

RESTART_FROM = ("init", "best")


class Restart:
    """When and how a run restarts its main network; ``restarted_at`` (-1: not yet; -2: skipped) is checkpointed."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        d = trainer.config.decision
        self.fraction, self.commitment, self.source = d.restart_fraction, d.restart_at_commitment, d.restart_from
        self.min_epochs = float(d.get("restart_min_epochs", 0.0))
        # Only a decision learned from the validation hypergradient (slf, softmax, joint, meta_weight_net)
        # is worth a restart; l2rw learns nothing across steps.
        learned = trainer.loss.needs_lookahead and bool(trainer.loss.decision_variables)
        learned = learned or getattr(trainer.loss, "restarts", False)  # glc: the restart is its method
        self.enabled = learned and bool(self.fraction or self.commitment)
        self.restarted_at = tf.Variable(-1, dtype=tf.int64, trainable=False, name="restarted_at")

    @property
    def done(self) -> bool:
        """A restart happened (``restarted_at`` >= 0) or was due and skipped (-2): it is not tried again."""
        return int(self.restarted_at.numpy()) != -1

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
    def estimates(self) -> bool:
        """A ``forward`` noise matrix gets estimated: at the restart, or (strategies that never restart) at the
        restart point all the same."""
        return self.enabled or bool(self.fraction)

    def estimate_due(self, step: int) -> bool:
        """The estimate without a restart, before ``step``: for a strategy that never restarts (its fixed
        weights, or no learned decision), at the restart fraction of the budget."""
        return (
            getattr(self.trainer.loss, "transition", None) is not None
            and not self.enabled
            and bool(self.fraction)
            and step == round(self.fraction * self._total)
        )

    def epochs_seen(self, step: int) -> float:
        """Passes over the training split by ``step`` (the global batch times the steps)."""
        t = self.trainer
        return step * t.config.batch_size / len(t.data.x_train)

    def skip_reason(self, step: int) -> str:
        """Why a restart due at ``step`` is skipped, in a sentence; "" if it goes ahead."""
        seen = self.epochs_seen(step)
        if seen >= self.min_epochs:
            return ""
        return (
            f"Step {step}: no restart: the main network has seen the training split {seen:.2f} times "
            f"(decision.restart_min_epochs = {self.min_epochs:g}): too few passes to have fitted label noise, "
            "and fresh weights would not converge in the rest of the budget."
        )

    def estimate_transition(self, step: int) -> str:
        """The ``forward`` candidate's noise matrix from the network before the restart, on the clean split
        (``slf_tf.transition``; also when the restart is skipped); "" when the bag has no ``forward``."""
        t = self.trainer
        loss = t.loss
        if getattr(loss, "transition", None) is None:
            return ""
        d = t.data
        calibrate = not getattr(loss, "restarts", False)  # glc, the peer, estimates as its paper does
        matrix, calibration = transition_lib.from_network(
            t.model,
            d.x_val,
            d.y_val,
            loss.num_classes,
            loss.from_logits,
            noisy=(d.x_train, d.y_train) if calibrate else None,
        )
        loss.set_transition(matrix)
        forgot = loss.forget_candidate("forward", t.decision_optimizer)  # until now it was cross-entropy
        message = (
            f"Step {step}: estimated the 'forward' candidate's noise matrix on the clean split "
            f"({calibration.describe()}; mean diagonal {float(np.mean(np.diag(matrix))):.3f})"
            + ("; the decision's logits for it start again from 0." if forgot else ".")
        )
        logging.info("%s", message)
        return message

    def skip(self, step: int, reason: str) -> str:
        """Records that the restart due at ``step`` is skipped (not tried again); returns ``reason``."""
        self.restarted_at.assign(-2)
        logging.info("%s", reason)
        return reason

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
