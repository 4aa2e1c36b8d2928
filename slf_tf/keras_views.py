"""What ``fit`` shows of the decision: a TensorBoard callback with one run per candidate, and a compact bar.

    model.fit(x, y, callbacks=[slf_tf.callbacks.SLFTensorBoard("logs"), keras.callbacks.TensorBoard("logs")])

Both read the compiled loss's own state (not ``fit``'s logs), so where they stand in the callback list does
not matter. ``SLFModel.fit`` uses :class:`CompactProgbar` unless you pass a ``ProgbarLogger`` of your own.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras.src.utils import io_utils

from slf_tf import summaries
from slf_tf.heads import HeadLosses
from slf_tf.stochastic_loss import CombinedLoss

__all__ = ["CompactProgbar", "SLFTensorBoard", "decision_line"]


def _compiled_loss(model: keras.Model, who: str) -> CombinedLoss | HeadLosses:
    """The model's combined loss; for an ``SLFModel`` with several outputs, all of them (``HeadLosses``)."""
    if isinstance(getattr(model, "slf_loss", None), HeadLosses):
        return model.slf_loss
    loss = getattr(model, "loss", None)
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError(
            f"{who} takes a model compiled with one combined loss, or an SLFModel; this one has a loss per "
            f"output ({loss!r}) and is not an SLFModel. Several outputs are trained by SLFModel."
        )
    if not isinstance(loss, CombinedLoss):
        raise ValueError(f"{who} needs a model compiled with a slf_tf combined loss; got {loss!r}.")
    return loss


def decision_line(loss: CombinedLoss, shown: int = 3) -> str:
    """``decision: gce(q=0.7) P 0.97 w 0.90 | mae P 0.05 w 0.04 | ...``: the candidates the decision favours now."""
    probabilities = np.asarray(loss.selection_probabilities())
    weights = np.asarray(loss.current_weights())
    order = np.argsort(-probabilities, kind="stable")[:shown]
    parts = [f"{loss.names[i]} P {probabilities[i]:.2f} w {weights[i]:.2f}" for i in order]
    more = f" | and {loss.num_losses - shown} more (all in History)" if loss.num_losses > shown else ""
    return "decision: " + " | ".join(parts) + more


class CompactProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar without the ``slf_*`` keys (one per candidate), and one line per epoch naming the
    candidates the decision favours. ``History`` and the other callbacks still get every key."""

    @staticmethod
    def _compact(logs: dict[str, Any] | None) -> dict[str, Any]:
        return {k: v for k, v in (logs or {}).items() if not k.startswith("slf_")}

    def _update_progbar(self, batch, logs=None):
        super()._update_progbar(batch, self._compact(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, self._compact(logs))
        loss = getattr(self.model, "slf_loss", getattr(self.model, "loss", None))
        if self.verbose and isinstance(loss, CombinedLoss):
            io_utils.print_msg(decision_line(loss))
        elif self.verbose and hasattr(loss, "heads"):  # several outputs (HeadLosses): a line per output
            for key, head in zip(loss.keys, loss.heads, strict=True):
                io_utils.print_msg(decision_line(head).replace("decision:", f"decision ({key}):", 1))

    def on_test_end(self, logs=None):
        super().on_test_end(self._compact(logs))


class SLFTensorBoard(keras.callbacks.Callback):
    """Writes the decision to TensorBoard the way the trainer does: one run per candidate
    (``<log_dir>/candidates/<name>``, so each chart overlays the candidates), the decision's scalars in
    ``<log_dir>/decision``, a heatmap of P(selected) each epoch, and a Custom Scalars page. With an
    ``SLFModel`` of several outputs, every output's candidates (runs ``candidates/<output>.<candidate>``).

    Use the same ``log_dir`` as ``keras.callbacks.TensorBoard``: its ``train`` and ``validation`` runs then sit
    beside these, and the Custom Scalars page charts their loss and accuracy too.

    Args:
      log_dir: the TensorBoard log directory.
      update_freq: ``"epoch"``, or write every this many batches (reads a few variables each time).
    """

    def __init__(self, log_dir: str, update_freq: str | int = "epoch"):
        super().__init__()
        if update_freq != "epoch" and (isinstance(update_freq, bool) or not isinstance(update_freq, int)
                                       or update_freq < 1):  # fmt: skip
            raise ValueError(f"update_freq must be 'epoch' or an integer >= 1; got {update_freq!r}.")
        self.log_dir = log_dir
        self.update_freq = update_freq
        self._writer: summaries.MetricWriter | None = None
        self._steps: list[int] = []
        self._probabilities: list[np.ndarray] = []
        self._last_selected: np.ndarray | None = None
        self._last_step = 0
        self._batches = 0

    def on_train_begin(self, logs=None):
        self._loss = loss = _compiled_loss(self.model, "SLFTensorBoard")
        chief = self.model.distribute_strategy.extended.should_checkpoint  # one writer per cluster
        self._writer = summaries.MetricWriter(
            self.log_dir, enabled=chief, candidates=dict(zip(loss.tags, loss.names, strict=True)), jsonl=False
        )
        self._writer.layout(summaries.slf_layout(keras_metrics=True))
        self._last_selected = np.asarray(loss.times_selected)
        self._last_step = int(loss.step.numpy())

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.update_freq != "epoch" and self._batches % self.update_freq == 0:
            self._write(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._write(logs)
        if self._steps:
            loss = self._loss
            png = summaries.selection_heatmap_png(loss.names, self._steps, np.stack(self._probabilities))
            self._writer.image_png(self._steps[-1], "slf/selection_heatmap", png)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()

    def _write(self, logs: dict[str, Any] | None) -> None:
        loss = self._loss
        step = int(loss.step.numpy())  # the loss's own count of training steps: batches and epochs agree
        if self._steps and step == self._steps[-1]:
            return
        selected = np.asarray(loss.times_selected)
        frequency = (selected - self._last_selected) / max(1, step - self._last_step)
        metrics = {}
        if logs and "slf_hypergrad_norm" in logs:
            metrics["hypergrad_norm"] = logs["slf_hypergrad_norm"]
        self._writer.scalars(step, summaries.slf_scalars(loss, metrics, frequency, loss.tags))
        self._steps.append(step)
        self._probabilities.append(np.asarray(loss.selection_probabilities()))
        self._last_selected, self._last_step = selected, step
