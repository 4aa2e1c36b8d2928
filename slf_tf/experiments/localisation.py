"""Localisation with noisy labels and boxes: a digit pasted on a canvas, a class head and a box head.

Each scikit-learn digit (8x8, bundled: no network) is scaled to a random size and
pasted at a random place on a ``canvas x canvas`` image; the model predicts its
class and its box (corners ``x_min, y_min, x_max, y_max`` as fractions of the
canvas). Training labels are symmetrically noisy (``label_noise``) and training
boxes jittered (Gaussian, ``box_jitter``) with a share replaced by random boxes
(``box_outliers``); validation and test are clean. Each head has a bag and, under
SLF, its own decision network (``slf_tf.HeadLosses``): both learn from one lookahead
whose objective is the sum of the heads' validation losses. The sweep is the grid
of (class loss, box loss) pairs, picked on validation accuracy + mean IoU; every row
at its best-validation checkpoint by the same score.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import keras
import numpy as np
from sklearn.datasets import load_digits

import slf_tf
from slf_tf import models
from slf_tf.data import noisy_boxes, paste
from slf_tf.experiments import common, fair_fit


def make_data(config, seed: int) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Train / val / test from disjoint digits (split by ``config.data_seed``); training labels and boxes noisy."""
    digits, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(config.data_seed).permutation(len(digits))
    cut = np.cumsum([config.train_digits, config.val_digits])
    rng = np.random.default_rng(config.data_seed + 1)
    out = {}
    for name, idx, copies in zip(("train", "val", "test"), np.split(order, cut), (config.copies, 1, config.copies),
                                 strict=True):  # fmt: skip
        idx = np.repeat(idx, copies)
        images, boxes = paste(digits[idx], config.canvas, rng)
        out[name] = (images, {"class": labels[idx].astype(np.int32), "box": boxes})
    noise = np.random.default_rng(2000 + seed)
    y = out["train"][1]
    flip = noise.random(len(y["class"])) < config.label_noise
    y["class"] = np.where(flip, noise.integers(0, 10, len(flip)), y["class"]).astype(np.int32)
    y["box"] = noisy_boxes(y["box"], config.box_jitter, config.box_outliers, noise)
    return out


def build_network(canvas: int, seed: int) -> keras.Model:
    """A small CNN with two heads: ``class`` (10 logits) and ``box`` (4 corners, ``models.CornersFromCentreSize``)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((canvas, canvas, 1))
    h = keras.layers.Conv2D(16, 3, activation="relu", padding="same")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu", padding="same")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(h))
    box = models.CornersFromCentreSize(name="box")(keras.layers.Dense(4)(h))
    outputs = {"class": keras.layers.Dense(10, name="class")(h), "box": box}
    return keras.Model(inputs, outputs, name="localiser")


def box_iou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """IoU per box pair (``1 - iou`` loss of slf_tf.losses)."""
    iou = 1.0 - slf_tf.losses.get("iou", task="regression").per_position(target, pred)
    return np.asarray(iou)


def evaluate(network: keras.Model, data) -> dict[str, float]:
    """Accuracy and mean IoU on a split."""
    images, y = data
    pred = network.predict(images, batch_size=512, verbose=0)
    accuracy = float(np.mean(np.argmax(pred["class"], axis=-1) == y["class"]))
    return {"accuracy": accuracy, "mean_iou": float(np.mean(box_iou(pred["box"], y["box"])))}


def run(config, workdir: str) -> dict[str, Any]:
    """The grid sweep and SLF over ``config.seeds`` seeds; writes localisation.md, results.json, TensorBoard runs."""
    common.prepare(workdir, config)
    class_bag, box_bag = list(config.class_candidates), list(config.box_candidates)

    def build(name):
        def make(seed):
            if name.startswith("slf"):
                defaults = fair_fit.slf_defaults(config)
                losses = {
                    "class": slf_tf.StochasticLoss(class_bag, seed=seed, **defaults),
                    "box": slf_tf.StochasticLoss(
                        box_bag,
                        task="regression",
                        seed=seed + 1,
                        validation_loss=config.box_validation_loss,
                        **defaults,
                    ),
                }
            else:
                class_loss, box_loss = name.removeprefix("fixed:").split("+")
                losses = {
                    "class": slf_tf.FixedLoss(class_bag, loss=class_loss),
                    "box": slf_tf.FixedLoss(box_bag, loss=box_loss, task="regression"),
                }
            return build_network(config.canvas, seed), losses

        return make

    pairs = [f"fixed:{c}+{b}" for c, b in itertools.product(class_bag, box_bag)]
    rows = {name: build(name) for name in pairs} | {"slf": build("slf")}
    rows |= {f"slf[{variant}]": build("slf") for variant in config.slf_variants}
    data_by_seed: dict[int, dict] = {}

    def train(name, network, losses, seed):
        data = data_by_seed.setdefault(seed, make_data(config, seed))
        settings = fair_fit.variant_settings(name)
        model = slf_tf.SLFModel(network, data["val"], val_batch_size=config.val_batch_size, **settings)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=losses,
                      loss_weights={"class": 1.0, "box": config.box_weight})  # fmt: skip
        writer = common.summary_writer(workdir, os.path.join(f"seed{seed}", name.replace(":", "_")))
        best = fair_fit.BestCheckpoint(network, lambda: _score(network, data["val"]), writer)
        callbacks = [best, *fair_fit.slf_callbacks(config, seed)]
        model.fit(*data["train"], batch_size=config.batch_size, epochs=config.epochs, verbose=0, callbacks=callbacks)
        writer.close()
        result = {"val": best.best, "best_epoch": best.best_epoch, "test": evaluate(network, data["test"])}
        if name.startswith("slf"):
            result["coefficients"] = {
                head: dict(zip(loss.names, np.asarray(loss.expected_coefficients()).tolist(), strict=True))
                for head, loss in losses.items()
            }
        return result

    results = fair_fit.fit_rows(rows, range(config.seeds), train)
    reference = f"fixed:{class_bag[0]}+{box_bag[0]}"
    summary = fair_fit.summarise(results, ["accuracy", "mean_iou"], reference)
    title = (
        f"Localisation, {100 * config.label_noise:.0f}% label noise, boxes jittered ({config.box_jitter}) with "
        f"{100 * config.box_outliers:.0f}% outliers; CE = {reference.removeprefix('fixed:')}"
    )
    markdown = fair_fit.table(summary, title)
    common.write_table(workdir, "localisation", markdown)
    common.write_json(workdir, "results.json", {"summary": summary, "runs": results})
    print(markdown)
    return summary


def _score(network, val) -> tuple[float, dict]:
    metrics = evaluate(network, val)
    return metrics["accuracy"] + metrics["mean_iou"], metrics
