"""The settings and strategies of the quality benchmark, and one run (a "job") of the fair protocol.

Every setting is a config built from the project's own configs; every strategy
is a config override. A job trains one (setting, strategy, seed) with the
trainer, evaluates on the clean validation split every ``eval_every_steps``
and keeps the best-validation checkpoint, and returns the last step's and the
best checkpoint's validation and test metrics with the wall-clock time.
"""

from __future__ import annotations

import ast
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import ml_collections

from configs import diabetes_outliers, digits, digits_boxes
from slf_tf import data as data_lib

# Setting name -> (config factory, noisy?, needs MNIST?).
SETTINGS: dict[str, tuple[Callable[[str], ml_collections.ConfigDict], bool, bool]] = {}
# Settings whose rows are the peers only (CE and the sweep, the oracle, l2rw, meta_weight_net, glc, slf, joint):
# the larger ones, where every run costs minutes.
PEERS_ONLY: set[str] = set()
PEER_STRATEGIES = ("l2rw", "meta_weight_net", "slf", "joint")
FASHION_MNIST_DIR = data_lib.IDX_DATASETS["fashion_mnist"][1]


def _setting(name: str, noisy: bool, mnist: bool = False, peers_only: bool = False):
    def register(factory):
        SETTINGS[name] = (factory, noisy, mnist)
        if peers_only:
            PEERS_ONLY.add(name)
        return factory

    return register


def available(mnist_dir: str) -> dict[str, tuple]:
    """The settings whose data is here: MNIST ones with ``mnist_dir``, Fashion-MNIST ones with Debian's files."""
    fashion = os.path.isdir(FASHION_MNIST_DIR)
    return {k: v for k, v in SETTINGS.items() if (mnist_dir or not v[2]) and (fashion or not k.startswith("fmnist"))}


def _digits(label_noise: float = 0.0, kind: str = "symmetric", max_train: int = 0) -> ml_collections.ConfigDict:
    c = digits.get_config()
    c.data.label_noise, c.data.noise_kind, c.data.max_train_examples = label_noise, kind, max_train
    c.num_train_steps = 1500
    return c


@_setting("digits_clean", noisy=False)
def _digits_clean(_):
    return _digits()


@_setting("digits_sym20", noisy=True)
def _digits_sym20(_):
    return _digits(0.2)


@_setting("digits_sym40", noisy=True)
def _digits_sym40(_):
    return _digits(0.4)


@_setting("digits_sym60", noisy=True)
def _digits_sym60(_):
    return _digits(0.6)


@_setting("digits_pair30", noisy=True)
def _digits_pair30(_):
    return _digits(0.3, "pair")


@_setting("digits_small_sym40", noisy=True)
def _digits_small(_):
    """The small-data regime: 300 training images (of ~1,200), 40% symmetric noise."""
    return _digits(0.4, max_train=300)


@_setting("breast_cancer_sym30", noisy=True)
def _breast_cancer(_):
    c = _digits(0.3)
    c.data.name = "breast_cancer"
    c.num_train_steps = 1000
    c.model.hidden_units = (64, 32)
    return c


@_setting("mnist10k_sym40", noisy=True, mnist=True)
def _mnist(mnist_dir):
    c = digits.get_config()
    c.data.name, c.data.data_dir = "mnist", mnist_dir
    c.data.val_fraction = 0.01  # 600 clean validation images
    c.data.max_train_examples = 10_000
    c.data.label_noise = 0.4
    c.num_train_steps = 2000
    c.batch_size = 128
    c.model.hidden_units = (256, 128)
    c.decision.every = 2
    return c


@_setting("mnist_cnn_sym40", noisy=True, mnist=True)
def _mnist_cnn(mnist_dir):
    """The small CNN on 28x28 MNIST images: 5,000 training images at 40% symmetric noise."""
    c = _mnist(mnist_dir)
    c.data.max_train_examples = 5_000
    c.model.name = "cnn"
    c.num_train_steps = 1200
    c.batch_size = 64
    c.decision.val_batch_size = 64
    return c


@_setting("digits_pair40", noisy=True)
def _digits_pair40(_):
    return _digits(0.4, "pair")


def _cnn_20k(name: str, data_dir: str, label_noise: float, kind: str) -> ml_collections.ConfigDict:
    """The small CNN on 20,000 28x28 training images, 600 clean validation images, ~6 epochs."""
    c = digits.get_config()
    c.data.name, c.data.data_dir = name, data_dir
    c.data.val_fraction = 0.01
    c.data.max_train_examples = 20_000
    c.data.label_noise, c.data.noise_kind = label_noise, kind
    c.model.name = "cnn"
    c.num_train_steps = 2000
    c.batch_size = 64
    c.decision.val_batch_size = 64
    c.decision.every = 2
    return c


@_setting("fmnist_cnn_sym40", noisy=True, peers_only=True)
def _fmnist_sym40(_):
    return _cnn_20k("fashion_mnist", "", 0.4, "symmetric")


@_setting("fmnist_cnn_pair40", noisy=True, peers_only=True)
def _fmnist_pair40(_):
    return _cnn_20k("fashion_mnist", "", 0.4, "pair")


@_setting("mnist_cnn_pair40", noisy=True, mnist=True, peers_only=True)
def _mnist_cnn_pair40(mnist_dir):
    return _cnn_20k("mnist", mnist_dir, 0.4, "pair")


@_setting("diabetes_out10", noisy=True)
def _diabetes(_):
    return diabetes_outliers.get_config()


@_setting("digits_boxes_sym40", noisy=True)
def _digits_boxes(_):
    """Two outputs (configs/digits_boxes.py): a class head (40% symmetric noise) and a box head (jittered,
    20% random boxes); every row is scored by ``score``, the mean of test accuracy and mean IoU."""
    return digits_boxes.get_config()


def strategies(config: ml_collections.ConfigDict, peers_only: bool = False) -> dict[str, dict[str, Any]]:
    """Strategy name -> config overrides: one fixed run per candidate (the sweep), then the rest.

    The example-weighting peers run on cross-entropy (their papers' setting) and
    only for classification (their papers' rule is a classifier's). With several
    outputs (``config.heads``) the sweep is every combination of the outputs' fixed
    losses (``fixed:<label loss>+<box loss>``), beside softmax weighting and SLF.
    """
    if config.get("heads"):  # several outputs: the sweep is every pair of fixed losses; no example weighting
        bags = {output: config.heads[output].candidates for output in data_lib.MULTI_OUTPUT[config.data.name]}
        out = {}
        for pair in itertools.product(*bags.values()):
            fixed = {f"heads.{output}.fixed": loss for output, loss in zip(bags, pair, strict=True)}
            out["fixed:" + "+".join(pair)] = {"loss.strategy": "fixed", **fixed}
        return out | {name: {"loss.strategy": name} for name in ("softmax", "slf")}
    out = {f"fixed:{name}": {"loss.strategy": "fixed", "loss.fixed": name} for name in sweep_losses(config)}
    regression = config.data.name == "diabetes"
    names = PEER_STRATEGIES if peers_only else ("uniform", "random", "uncertainty", "softadapt", "softmax", "slf")
    if not peers_only and not regression:
        names = (*names, "l2rw", "meta_weight_net", "joint")
    for name in names:
        out[name] = {"loss.strategy": name}
        if name in ("l2rw", "meta_weight_net"):
            out[name]["loss.fixed"] = "cross_entropy"
    if not regression:  # Gold Loss Correction, the loss-correcting peer (its own bag: docs/design.md)
        out["glc"] = {"loss.strategy": "glc", "loss.candidates": ("cross_entropy", "forward")}
    return out


def sweep_losses(config) -> list[str]:
    """The candidates the sweep trains one by one: all but ``forward``, whose noise matrix needs a restart
    (``fixed`` refuses it; ``glc`` is its standalone row)."""
    return [name for name in config.loss.candidates if name != "forward"]


def base_row(setting: str) -> str:
    """The "CE" row every other is paired with: fixed cross-entropy; fixed MSE for regression; with several
    outputs the configs' own fixed pair (cross-entropy and MSE, the regression default)."""
    if setting.startswith("diabetes"):
        return "fixed:mse"
    return "fixed:cross_entropy+mse" if setting.startswith("digits_boxes") else "fixed:cross_entropy"


def apply(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted ``overrides`` (``{"decision.every": 2}``)."""
    from slf_tf.training.config_checks import with_overrides

    return with_overrides(config, overrides)


def _top_level_split(text: str) -> list[str]:
    """``text`` split at the commas outside brackets, so a value may be a tuple: ``loss.candidates=('a', 'b')``."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "([{") - (char in ")]}")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def parse_variants(text: str) -> dict[str, dict]:
    """``"a:decision.every=2,loss.k=2;b:..."`` -> ``{"a": {"loss.strategy": "slf", "decision.every": 2, ...}}``."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        name, _, body = item.partition(":")
        overrides = {"loss.strategy": "slf"}
        for pair in filter(None, _top_level_split(body)):
            key, _, value = pair.partition("=")
            try:
                overrides[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                overrides[key.strip()] = value.strip()
        out[name.strip()] = overrides
    return out


def run_job(setting: str, strategy: dict[str, Any], seed: int, mnist_dir: str = "") -> dict[str, Any]:
    """Trains one (setting, strategy, seed) under the fair protocol; returns its metrics and seconds."""
    from slf_tf.training import Trainer

    config = apply(SETTINGS[setting][0](mnist_dir), strategy)
    config.seed = seed
    config.eval_every_steps = max(1, config.num_train_steps // 15)  # 15 evaluations on the clean split
    config.log_every_steps = config.checkpoint_every_steps = config.num_train_steps
    config.best_metric, config.early_stopping_patience, config.export = "auto", 0, False
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="slf_quality_") as workdir:
        results = Trainer(config, workdir).run()
    return {
        "seconds": time.time() - start,
        "last": {"val": results["val"], "test": results["test"]},
        "best": results["best"],
        "decision": results["decision"],
    }
