"""SLF with several outputs: digits on a canvas, a class head and a box head, each with its own bag.

Run:  python -m trainers.multi_output --config configs/digits_boxes.py --workdir runs/digits_boxes
Baseline (one pair of fixed losses): --config.loss.strategy=fixed
  [--config.heads.label.fixed=gce(q=0.7) --config.heads.box.fixed=giou]
Data: scikit-learn's 1,797 digits (bundled), each training and test digit pasted at 3 random places and
scales on a 32x32 canvas (3,504 training images);
40% symmetric label noise, and training boxes jittered (0.05 of the canvas per corner) with 20%
replaced by random boxes; the validation and test splits are clean.

Each output has its own candidates, fixed loss, validation objective and loss weight
(``config.heads.<output>``); everything else about the combined loss (strategy, k, temperature,
estimator ...) is ``config.loss``'s, shared by the outputs, as the decision update is
(``config.decision``): one lookahead, J the sum of the outputs' validation losses.
The best checkpoint is picked by the mean of validation accuracy and IoU (``best_metric="auto"``:
``val_score``), by J (``val_loss``), or by one output's
metric (``--config.best_metric=val_label/accuracy``, ``val_box/iou``).
"""

import ml_collections

from configs import digits


def _head(candidates: tuple[str, ...], fixed: str, validation_loss: str = "") -> ml_collections.ConfigDict:
    head = ml_collections.ConfigDict()
    head.candidates = candidates
    head.fixed = fixed  # the candidate of strategy=fixed
    head.validation_loss = validation_loss  # J of this output ("": cross-entropy or mse by task)
    head.weight = 1.0  # its training loss's weight (Keras' loss_weights)
    head.strategy = ""  # "": config.loss.strategy
    return head


def get_config() -> ml_collections.ConfigDict:
    config = digits.get_config()
    config.data.name = "digits_boxes"
    config.data.canvas = 32
    config.data.copies = 3  # placements per training and test digit (validation: one), as in trainers.localisation
    config.data.label_noise = 0.4
    config.data.box_jitter = 0.05  # Gaussian noise on each training box corner (fraction of the canvas)
    config.data.outlier_fraction = 0.2  # share of training boxes replaced by random boxes
    config.model.name = "cnn"
    config.model.filters = (16, 32)
    config.num_train_steps = 1200
    config.eval_every_steps = 200
    config.checkpoint_every_steps = 400
    config.optimizer.learning_rate = 3e-3
    config.loss.candidates = ()  # unused: each output lists its own (config.heads)
    config.heads = ml_collections.ConfigDict()
    config.heads.label = _head(("cross_entropy", "gce(q=0.7)", "label_smoothing(epsilon=0.1)"), "cross_entropy")
    # The box's J is 1 - IoU, the metric's own form (docs/experiments.md, "Localisation").
    config.heads.box = _head(("mse", "huber(delta=0.1)", "giou"), "mse", validation_loss="iou")
    return config


def get_test_config() -> ml_collections.ConfigDict:
    """Seconds, for the tests: a 16x16 canvas, a one-layer CNN, 20 steps."""
    config = get_config()
    config.data.canvas = 16
    config.data.copies = 1
    config.model.filters = (8,)
    config.num_train_steps = 20
    config.batch_size = 32
    config.log_every_steps = 5
    config.eval_every_steps = 10
    config.checkpoint_every_steps = 10
    config.decision.val_batch_size = 32
    config.heads.label.candidates = ("cross_entropy", "gce(q=0.7)")
    config.heads.box.candidates = ("mse", "giou")
    return config
