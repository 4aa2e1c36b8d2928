"""Strategies that weight *examples* from the validation lookahead, next to SLF's weighting of *losses*.

All three read the per-example scores ``D[j, i] = <grad l_ji(w), P grad J(w')>``
that one forward-mode pass gives (:mod:`slf_tf.hypergrad`, method ``jvp``);
the update rules are written out in docs/design.md ("Example weighting").

  * ``l2rw``: Learning to Reweight Examples (Ren et al., ICML 2018). Each
    step, the example weights are the negative derivative of the validation
    loss after a virtual step with per-example weights perturbed around zero,
    ``max(<grad l_j(w), P grad J(w)>, 0)``, normalised over the batch (zero if
    all are). Nothing is learned across steps.
  * ``meta_weight_net``: Meta-Weight-Net (Shu et al., NeurIPS 2019). An MLP
    (1-100-1, sigmoid output) maps an example's loss to its weight; it is trained
    through the lookahead, ``dJ/dV_j = -<grad l_j(w), P grad J(w')> / n``.
  * ``joint``: SLF and L2RW together. The decision network's coefficients are
    learned as in SLF; the example weights are L2RW's rule on the combined loss,
    taken at the weights the step uses (uniform), from the same scores ``D``.

``l2rw`` and ``meta_weight_net`` weight the examples of one candidate (the bag's
first, cross-entropy, as in their papers: ``loss=``), or of the bag's mean
(``example_loss="uniform"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from slf_tf import distributed
from slf_tf.stochastic_loss import STRATEGIES, FixedLoss, StochasticLoss

__all__ = ["EXAMPLE_LOSSES", "JointLoss", "L2RWLoss", "MetaWeightNetLoss", "l2rw_weights"]

EXAMPLE_LOSSES = ("fixed", "uniform")


def l2rw_weights(scores: tf.Tensor, coefficients: tf.Tensor, global_batch: tf.Tensor) -> tf.Tensor:
    """L2RW's example weights ``[batch]`` from scores ``D [batch, N]`` and the combined loss's ``c [N]``.

    ``max(sum_i c_i D[j, i], 0)``, normalised so that the weights of the global
    batch sum to ``n`` (the objective stays a mean); all zero if none is positive.
    """
    s = tf.nn.relu(tf.linalg.matvec(scores, tf.cast(coefficients, scores.dtype)))
    total = distributed.all_sum(tf.reduce_sum(s))
    n = tf.cast(global_batch, s.dtype)
    return tf.where(total > 0, s * n / tf.maximum(total, tf.cast(1e-30, s.dtype)), tf.zeros_like(s))


class _ExampleWeightingLoss(FixedLoss):
    """Weights the examples of one candidate (``loss``) or of the bag's mean; ``c`` is fixed."""

    needs_lookahead = True
    needs_example_scores = True

    def __init__(self, losses: Sequence[str], loss: str | None = None, example_loss: str = "fixed", **kwargs: Any):
        super().__init__(losses, loss=loss, **kwargs)
        if example_loss not in EXAMPLE_LOSSES:
            raise ValueError(f"Unknown example_loss {example_loss!r}; known: {list(EXAMPLE_LOSSES)}.")
        self.example_loss = example_loss
        if example_loss == "uniform":
            self._one_hot = tf.fill([self.num_losses], 1.0 / self.num_losses)

    def get_config(self):
        return {**super().get_config(), "example_loss": self.example_loss}


@keras.saving.register_keras_serializable(package="slf_tf")
class L2RWLoss(_ExampleWeightingLoss):
    """Learning to Reweight Examples (Ren et al. 2018): per-step example weights from the lookahead at ``w``."""

    strategy = "l2rw"
    reweights_from_lookahead = True
    lookahead_from_current = True

    def lookahead_example_weights(self, scores, forward):
        return l2rw_weights(scores, forward.coefficients, forward.global_batch)


@keras.saving.register_keras_serializable(package="slf_tf")
class MetaWeightNetLoss(_ExampleWeightingLoss):
    """Meta-Weight-Net (Shu et al. 2019): an MLP from an example's loss to its weight, trained by the lookahead.

    Args (beyond :class:`FixedLoss`): ``weight_net_units``, the hidden width (the
    paper's 100). The decision optimizer's default learning rate is the paper's 1e-3.
    """

    strategy = "meta_weight_net"
    decision_learning_rate = 1e-3
    # Its paper's full one-step lookahead: the trust region cost it 0.45 points on the mean (README).
    trust_region_by_default = False

    def __init__(self, losses: Sequence[str], weight_net_units: int = 100, **kwargs: Any):
        super().__init__(losses, **kwargs)
        if isinstance(weight_net_units, bool) or not isinstance(weight_net_units, int) or weight_net_units < 1:
            raise ValueError(f"weight_net_units must be an integer >= 1; got {weight_net_units!r}.")
        self.weight_net_units = weight_net_units
        self.weight_network = keras.Sequential(
            [
                keras.Input((1,)),
                keras.layers.Dense(weight_net_units, activation="relu"),
                keras.layers.Dense(1, activation="sigmoid"),
            ],
            name=f"{self.name}_weight_network",
        )

    @property
    def decision_variables(self) -> list:
        return list(self.weight_network.trainable_variables)

    def forward_example_weights(self, combined):
        loss = tf.stop_gradient(tf.cast(combined, tf.float32))[:, None]  # the weight depends on the loss's value only
        return tf.cast(tf.reshape(self.weight_network(loss), [-1]), combined.dtype)

    def decision_loss(self, choice, lookahead):
        """``sum_j V(l_j) * dJ/dV_j`` (dJ/dV held fixed), scaled to a global objective.

        It sums this replica's examples only, and the step divides every decision
        objective by the number of replicas, so it is multiplied by that number here.
        """
        forward = lookahead.forward
        weights = self.forward_example_weights(forward.combined)  # recomputed here: a gradient path to the MLP
        d_j_dv = -tf.linalg.matvec(lookahead.example_scores, tf.cast(forward.coefficients, weights.dtype))
        d_j_dv /= tf.cast(forward.global_batch, weights.dtype)
        return distributed.num_replicas() * tf.reduce_sum(weights * tf.stop_gradient(d_j_dv))

    def get_config(self):
        return {**super().get_config(), "weight_net_units": self.weight_net_units}


@keras.saving.register_keras_serializable(package="slf_tf")
class JointLoss(StochasticLoss):
    """SLF's learned coefficients and L2RW's example weights, both from one lookahead's scores ``D``."""

    strategy = "joint"
    needs_example_scores = True
    reweights_from_lookahead = True

    def lookahead_example_weights(self, scores, forward):
        return l2rw_weights(scores, forward.coefficients, forward.global_batch)


STRATEGIES.update({"l2rw": L2RWLoss, "meta_weight_net": MetaWeightNetLoss, "joint": JointLoss})
