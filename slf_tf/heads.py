"""Several outputs, a decision each: the combined losses of a multi-head model as one loss for the step.

    model.compile(loss={"class": slf_tf.StochasticLoss([...]), "box": slf_tf.StochasticLoss([...], task="regression")})

:class:`HeadLosses` puts every head's candidates side by side, so that
:class:`slf_tf.train_step.TrainStep` runs unchanged: one forward/backward of the
batch gives the main gradient and one virtual step, the validation objective
``J`` is the sum of the heads' validation losses, and ``dJ/dc`` (one vector over
all heads' candidates) is split so that each head's decision network learns
from its part. The training objective is Keras' for several outputs: the sum
over heads of ``loss_weight * that head's loss``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import tensorflow as tf

from slf_tf.stochastic_loss import CombinedLoss

__all__ = ["HeadLosses", "HeadSelection", "as_step_loss", "weights_examples"]


class HeadSelection(NamedTuple):
    """One step's choice over all heads: each field concatenated (``[N_1 + N_2 + ...]``), and the heads' own."""

    coefficients: tf.Tensor
    gate: tf.Tensor
    weights: tf.Tensor
    soft_counts: tf.Tensor
    draws: None
    heads: tuple  # one selection.Selection per head


class HeadLosses:
    """The combined losses of a model's outputs (a dict by output name, or a list in output order).

    Args:
      losses: ``{output: CombinedLoss}`` or ``[CombinedLoss, ...]``, matching the model's outputs.
      loss_weights: Keras' ``compile(loss_weights=...)`` (same structure; default 1 each). They
        scale the heads' training losses; ``J`` is the plain sum of the heads' validation losses.

    The strategies that weight examples (``l2rw``, ``meta_weight_net``, ``joint``) give one
    weight per example from one loss; with several heads they would need one rule for all,
    so they are refused here.
    """

    needs_example_scores = False
    reweights_from_lookahead = False
    lookahead_from_current = False
    trust_region_by_default = True  # the heads select losses (example weighting is refused here)

    def __init__(self, losses: Mapping[str, CombinedLoss] | Sequence[CombinedLoss], loss_weights: Any = None):
        if isinstance(losses, Mapping):
            self.keys, heads = list(losses), list(losses.values())
        elif isinstance(losses, (list, tuple)):
            self.keys, heads = list(range(len(losses))), list(losses)
        else:
            raise ValueError(f"HeadLosses takes a dict or a list of combined losses; got {type(losses).__name__}.")
        bad = [k for k, h in zip(self.keys, heads, strict=True) if not isinstance(h, CombinedLoss)]
        if not heads or bad:
            raise ValueError(
                f"Every output needs a slf_tf combined loss (e.g. StochasticLoss); outputs {bad or 'none'} have none."
            )
        if len({id(h) for h in heads}) != len(heads):
            raise ValueError("Each output needs a loss object of its own (its own decision network and state).")
        weighting = [k for k, h in zip(self.keys, heads, strict=True) if weights_examples(h)]
        if weighting:
            raise ValueError(
                f"Outputs {weighting} use an example-weighting strategy (l2rw, meta_weight_net, joint), which weights "
                "each example from one loss; with several outputs use slf, softmax or the baselines."
            )
        corrected = [k for k, h in zip(self.keys, heads, strict=True) if getattr(h, "transition", None) is not None]
        if corrected:
            raise ValueError(
                f"Outputs {corrected} have the 'forward' candidate, whose noise matrix is estimated from one output's "
                "probabilities at the restart; it serves single-output models only."
            )
        self.heads = heads
        self.sizes = [h.num_losses for h in heads]
        self.loss_weights = [float(w) for w in self._per_head(loss_weights, 1.0, "loss_weights")]
        self.seed, self.step = heads[0].seed, heads[0].step  # the heads step together
        self.virtual_scale = heads[0].virtual_scale  # one lookahead for all heads: one trust region
        self.decision_learning_rate = heads[0].decision_learning_rate
        scheduled = [h for h in heads if hasattr(h, "temperature")]
        if scheduled:  # the sampler's temperature (the first output's that has one: a config gives all one schedule)
            self.temperature = scheduled[0].temperature

    # ----------------------------------------------------------- structure --

    def _per_head(self, value: Any, default: Any, what: str) -> list:
        """``value`` (a dict, a list, one value for all heads, or None) as one entry per head."""
        if value is None:
            return [default] * len(self.heads)
        if isinstance(value, Mapping):
            missing = [k for k in self.keys if k not in value]
            if missing:
                raise ValueError(f"{what} has no entry for outputs {missing}; it has {sorted(map(str, value))}.")
            return [value[k] for k in self.keys]
        if isinstance(value, (list, tuple)):
            if len(value) != len(self.heads):
                raise ValueError(f"{what} has {len(value)} entries for {len(self.heads)} outputs {self.keys}.")
            return list(value)
        return [value] * len(self.heads)

    def _split(self, tensor: tf.Tensor, axis: int = -1) -> list[tf.Tensor]:
        return tf.split(tensor, self.sizes, axis=axis)

    # ---------------------------------------------------------- properties --

    @property
    def names(self) -> list[str]:
        return [f"{k}/{name}" for k, h in zip(self.keys, self.heads, strict=True) for name in h.names]

    @property
    def num_losses(self) -> int:
        return sum(self.sizes)

    @property
    def needs_lookahead(self) -> bool:
        return any(h.needs_lookahead for h in self.heads)

    @property
    def needs_val_loss_before(self) -> bool:
        return any(h.needs_val_loss_before for h in self.heads)

    @property
    def decision_variables(self) -> list:
        return [v for h in self.heads for v in h.decision_variables]

    @property
    def state_variables(self) -> list:
        return [v for h in self.heads for v in h.state_variables]

    @property
    def skipped_steps(self) -> tf.Tensor:
        """The most steps any one output had no finite candidate (counting each step once, not per output)."""
        return tf.reduce_max(tf.stack([h.skipped_steps for h in self.heads]))

    @property
    def strategy(self) -> str:
        """The outputs' strategy (``slf``), or each output's (``label: slf, box: fixed``) where they differ."""
        strategies = [h.strategy for h in self.heads]
        if len(set(strategies)) == 1:
            return strategies[0]
        return ", ".join(f"{k}: {s}" for k, s in zip(self.keys, strategies, strict=True))

    @property
    def tags(self) -> list[str]:
        """Log-safe candidate names: ``<output>.<candidate tag>`` (``box.giou``)."""
        return [f"{k}.{tag}" for k, h in zip(self.keys, self.heads, strict=True) for tag in h.tags]

    # Views of the heads' state in one combined loss's layout, over all outputs' candidates (the trainer's
    # progress, TensorBoard and final report read them as they read a single CombinedLoss's).

    def _joined(self, view: str) -> tf.Tensor:
        return tf.concat([tf.convert_to_tensor(getattr(h, view)) for h in self.heads], axis=0)

    times_selected = property(lambda self: self._joined("times_selected"), doc="Steps each candidate was selected.")
    probability_sums = property(lambda self: self._joined("probability_sums"), doc="Sum over steps of P(selected).")
    weight_sums = property(lambda self: self._joined("weight_sums"), doc="Sum over steps of the weights b.")
    masked_counts = property(lambda self: self._joined("masked_counts"), doc="Steps each candidate was masked.")
    last_losses = property(lambda self: self._joined("last_losses"), doc="Candidate losses L_i, last step.")
    last_coefficients = property(lambda self: self._joined("last_coefficients"), doc="c used in the last step.")
    last_weights = property(lambda self: self._joined("last_weights"), doc="The weights b of the last step.")

    @property
    def totals(self) -> tf.Tensor:
        """``[times selected, sum P, sum b, masked]`` over all candidates, then the skipped steps."""
        parts = [self.times_selected, self.probability_sums, self.weight_sums, self.masked_counts]
        return tf.concat([*parts, [self.skipped_steps]], axis=0)

    def selection_probabilities(self) -> tf.Tensor:
        return tf.concat([h.selection_probabilities() for h in self.heads], axis=0)

    def expected_coefficients(self) -> tf.Tensor:
        return tf.concat([h.expected_coefficients() for h in self.heads], axis=0)

    def current_weights(self) -> tf.Tensor:
        return tf.concat([h.current_weights() for h in self.heads], axis=0)

    # ------------------------------------------------------------ the step --

    def sample(self, seed: Any) -> HeadSelection:
        """Each head's choice; head i > 0 draws from ``fold_in(seed, i)``, so equal heads draw differently."""
        seeds = [seed] + [tf.random.experimental.stateless_fold_in(seed, i) for i in range(1, len(self.heads))]
        choices = tuple(h.sample(s) for h, s in zip(self.heads, seeds, strict=True))
        return HeadSelection(*(tf.concat([getattr(c, f) for c in choices], 0) for f in HeadSelection._fields[:4]),
                             None, choices)  # fmt: skip

    def candidate_losses(self, y_true: Any, y_pred: Any, sample_weight: Any = None, mask: Any = None):
        """``(l [batch, sum N_h], finite)``: each head's candidate losses on its output, times its loss weight."""
        del mask  # each output carries its own Keras mask
        ys, preds = self._per_head(y_true, None, "y"), self._per_head(y_pred, None, "the model's outputs")
        weights = self._per_head(sample_weight, None, "sample_weight")
        parts = [h.candidate_losses(*args) for h, *args in zip(self.heads, ys, preds, weights, strict=True)]
        per_example = [tf.cast(w, p.dtype) * p if w != 1.0 else p for w, (p, _) in zip(self.loss_weights, parts,
                                                                                        strict=True)]  # fmt: skip
        return tf.concat(per_example, axis=1), tf.concat([f for _, f in parts], axis=0)

    def combine(self, per_example: tf.Tensor, finite: tf.Tensor, coefficients: tf.Tensor, fallback: tf.Tensor):
        """``(sum over heads of sum_i c_i l_i [batch], the masked c [N])``: each head masks its own candidates."""
        parts = [
            h.combine(*args)
            for h, *args in zip(
                self.heads,
                self._split(per_example, axis=1),
                self._split(finite),
                self._split(coefficients),
                self._split(fallback),
                strict=True,
            )
        ]
        return tf.add_n([combined for combined, _ in parts]), tf.concat([c for _, c in parts], axis=0)

    def forward_example_weights(self, combined: tf.Tensor) -> tf.Tensor:
        return tf.ones_like(combined)

    def validation_loss(self, y_true: Any, y_pred: Any) -> tf.Tensor:
        """``J`` per example ``[batch]``: the sum of the heads' validation losses."""
        ys, preds = self._per_head(y_true, None, "y"), self._per_head(y_pred, None, "the model's outputs")
        return tf.add_n([h.validation_loss(y, p) for h, y, p in zip(self.heads, ys, preds, strict=True)])

    def decision_loss(self, choice: HeadSelection, lookahead: Any) -> tf.Tensor:
        """The sum of the heads' rules, each with its part of ``dJ/dc`` and of the candidate losses."""
        grads, losses = self._split(lookahead.coefficient_gradient), self._split(lookahead.candidate_losses)
        terms = [
            h.decision_loss(c, lookahead._replace(coefficient_gradient=g, candidate_losses=part))
            for h, c, g, part in zip(self.heads, choice.heads, grads, losses, strict=True)
            if h.decision_variables
        ]
        return tf.add_n(terms) if terms else tf.zeros([])

    def selection_entropy(self) -> tf.Tensor:
        terms = [h.selection_entropy() for h in self.heads if hasattr(h, "selection_entropy")]
        return tf.add_n(terms) if terms else tf.zeros([])

    def unnormalize(self, losses: tf.Tensor) -> tf.Tensor:
        """Each head's raw candidate losses ``[N]``: its scale normalisation and its loss weight undone."""
        parts = [h.unnormalize(part / w) for h, part, w in zip(self.heads, self._split(losses), self.loss_weights,
                                                                 strict=True)]  # fmt: skip
        return tf.concat(parts, axis=-1)

    def record(self, choice, coefficients, losses, finite, val_loss=None, enabled=True) -> tf.Operation:
        """Every head's bookkeeping (its ``step`` += 1)."""
        pieces = zip(
            self.heads, choice.heads, self._split(coefficients), self._split(losses), self._split(finite), strict=True
        )
        return tf.group(*[h.record(ch, c, part, f, val_loss, enabled) for h, ch, c, part, f in pieces])

    def record_validation_loss(self, value: tf.Tensor) -> tf.Operation:
        return tf.group(*[h.record_validation_loss(value) for h in self.heads])

    def decision_summary(self) -> dict[str, tf.Tensor]:
        """The heads' summaries, keys prefixed by the output: ``slf_<output>_p_<candidate>``."""
        out = {}
        for key, head in zip(self.keys, self.heads, strict=True):
            out.update({k.replace("slf_", f"slf_{key}_", 1): v for k, v in head.decision_summary().items()})
        return out


def weights_examples(loss: CombinedLoss | type) -> bool:
    """Whether a combined loss (or its class) weights examples (``l2rw``, ``meta_weight_net``, ``joint``)."""
    klass = loss if isinstance(loss, type) else type(loss)
    overrides = klass.forward_example_weights is not CombinedLoss.forward_example_weights
    return bool(loss.reweights_from_lookahead or loss.needs_example_scores or overrides)


def as_step_loss(loss: Any, loss_weights: Any = None) -> CombinedLoss | HeadLosses:
    """What the training step trains: a combined loss, or :class:`HeadLosses` for a dict or list of them."""
    if isinstance(loss, CombinedLoss):
        if loss_weights is not None:
            raise ValueError("loss_weights needs several outputs, each with its own loss (a dict or a list).")
        return loss
    if isinstance(loss, (Mapping, list, tuple)):
        return HeadLosses(loss, loss_weights)
    raise ValueError(
        f"SLFModel.compile needs a slf_tf combined loss (e.g. StochasticLoss), or a dict or list of them, one per "
        f"output; got {loss!r}."
    )
