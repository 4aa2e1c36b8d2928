"""Datasets, deterministic splits, label noise and outliers (DESIGN 4).

Sources, by ``name``:
  * embedded, offline (scikit-learn's bundled files): ``digits`` (8x8 handwritten
    digits, 1,797 images), ``breast_cancer``, ``wine`` (classification),
    ``diabetes`` (regression);
  * ``mnist``: a directory holding the four standard IDX files
    (``train-images-idx3-ubyte[.gz]`` ...), gzipped or not;
  * ``tfds:<name>`` (e.g. ``tfds:fashion_mnist``): a TensorFlow Datasets set
    already prepared in ``data_dir`` (checked first: offline, TFDS retries for
    minutes before failing).

Splits (train / decision-validation / test) are a pure function of the seed; the
test split is never seen in training. Label noise (``symmetric`` or
``pair``-flip) and regression outliers apply to the training split, and to the
validation split unless ``clean_validation``.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from typing import Any

import numpy as np

__all__ = ["Dataset", "DATASETS", "NOISE_KINDS", "load", "load_idx", "load_mnist_dir", "noisy_labels"]

EMBEDDED = {
    "digits": "classification",
    "breast_cancer": "classification",
    "wine": "classification",
    "diabetes": "regression",
}
DATASETS = (*EMBEDDED, "mnist", "tfds:<name>")
NOISE_KINDS = ("symmetric", "pair")
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclasses.dataclass
class Dataset:
    """Arrays of one task, split three ways. ``x_*`` float32; ``y_*`` int32 labels or float32 targets."""

    name: str
    task: str  # "classification" | "regression"
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int  # 0 for regression
    image_shape: tuple[int, ...] | None = None  # (H, W, C) when the rows are images
    noise_mask_train: np.ndarray | None = None  # True where a label/target was corrupted

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def summary(self) -> str:
        noisy = "" if self.noise_mask_train is None else f", {self.noise_mask_train.mean():.0%} of train corrupted"
        return (
            f"{self.name} ({self.task}): train {len(self.x_train)}, val {len(self.x_val)}, "
            f"test {len(self.x_test)}, input {self.input_shape}"
            + (f", {self.num_classes} classes" if self.num_classes else "")
            + noisy
        )


# --------------------------------------------------------------------------- #
# IDX files (MNIST).
# --------------------------------------------------------------------------- #

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path: str) -> np.ndarray:
    """Reads one IDX file (gzipped or not); raises ``ValueError`` on a truncated or corrupt file."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"Cannot read IDX file {path}: {e}.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4]!r}).")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: the header needs {header} bytes, the file has {len(data)}.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: shape {shape} needs {expected} bytes of data, found {len(data) - header}."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find_idx(data_dir: str, stem: str) -> str:
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(stem)


def load_mnist_dir(data_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` from a directory of the four MNIST IDX files."""
    if not data_dir or not os.path.isdir(data_dir):
        raise ValueError(
            f"MNIST needs data_dir pointing at a directory with the four IDX files {sorted(MNIST_FILES.values())} "
            f"(optionally .gz); got data_dir={data_dir!r}, which is not a directory."
        )
    paths, missing = {}, []
    for key, stem in MNIST_FILES.items():
        try:
            paths[key] = _find_idx(data_dir, stem)
        except FileNotFoundError:
            missing.append(stem)
    if missing:
        raise ValueError(f"{data_dir} lacks the MNIST IDX file(s) {missing} (plain or .gz).")
    arrays = {key: load_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise ValueError(f"MNIST {split} images and labels differ in length in {data_dir}.")
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]


# --------------------------------------------------------------------------- #
# Noise.
# --------------------------------------------------------------------------- #


def noisy_labels(
    labels: np.ndarray, num_classes: int, rate: float, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupts a fraction ``rate`` of labels; returns ``(labels, corrupted_mask)``.

    ``symmetric``: a corrupted label becomes a uniformly drawn *other* class.
    ``pair``: class ``c`` flips to ``(c + 1) mod C`` (Han et al. 2018).
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"Unknown label noise kind {kind!r}; known: {list(NOISE_KINDS)}.")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label noise rate must be in [0, 1); got {rate!r}.")
    labels = labels.copy()
    mask = rng.random(len(labels)) < rate
    if kind == "symmetric":
        shift = rng.integers(1, num_classes, size=len(labels))
        labels[mask] = (labels[mask] + shift[mask]) % num_classes
    else:
        labels[mask] = (labels[mask] + 1) % num_classes
    return labels, mask


def _outliers(y: np.ndarray, fraction: float, scale: float, rng: np.random.Generator):
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"outlier fraction must be in [0, 1); got {fraction!r}.")
    y = y.copy()
    mask = rng.random(len(y)) < fraction
    y[mask] += rng.choice([-1.0, 1.0], size=int(mask.sum())) * scale * np.std(y)
    return y, mask


# --------------------------------------------------------------------------- #
# Loading.
# --------------------------------------------------------------------------- #


def _embedded(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return x.astype(np.float32), y


def _tfds(name: str, data_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ValueError(
            f"Dataset 'tfds:{name}' needs tensorflow-datasets, which is not installed "
            "(pip install tensorflow-datasets), and the data prepared locally."
        ) from None
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    prepared = os.path.join(root, name)
    if not os.path.isdir(prepared) or not any(
        os.path.exists(os.path.join(d, "dataset_info.json")) for d, _, _ in os.walk(prepared)
    ):
        raise ValueError(
            f"TFDS dataset {name!r} is not prepared under {root!r} (no {prepared}/<version>/dataset_info.json). "
            "Prepare it on a machine with network access (tfds.builder(name).download_and_prepare()) "
            "and copy it there, or set data_dir / TFDS_DATA_DIR."
        )
    builder = tfds.builder(name, data_dir=root)
    splits = builder.info.splits
    train = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1, as_supervised=True))
    test = (
        tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1, as_supervised=True)) if "test" in splits else None
    )
    return train[0], train[1], (test[0] if test else None), (test[1] if test else None)


def _split_indices(n: int, fractions: tuple[float, float], rng: np.random.Generator):
    order = rng.permutation(n)
    n_test = int(round(fractions[1] * n))
    n_val = int(round(fractions[0] * n))
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def load(
    name: str,
    *,
    seed: int = 0,
    data_dir: str = "",
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    max_train_examples: int = 0,
    label_noise: float = 0.0,
    noise_kind: str = "symmetric",
    clean_validation: bool = True,
    outlier_fraction: float = 0.0,
    outlier_scale: float = 5.0,
    standardize: bool = True,
) -> Dataset:
    """Loads ``name`` and splits it deterministically from ``seed``.

    Args:
      name: one of ``digits``, ``breast_cancer``, ``wine``, ``diabetes``, ``mnist``,
        ``tfds:<name>``.
      seed: splits, subsampling and noise are pure functions of it.
      data_dir: the IDX directory for ``mnist``; the TFDS root for ``tfds:``.
      val_fraction, test_fraction: held-out fractions (a set that ships a test
        split, like MNIST, keeps it and takes validation from its training part).
      max_train_examples: subsample the training split (0: all).
      label_noise, noise_kind: corrupt that fraction of training labels.
      clean_validation: keep the decision-validation split clean (True) or
        corrupt it like the training split.
      outlier_fraction, outlier_scale: regression targets moved by
        ``+-scale * std(y)`` in that fraction of training examples.
      standardize: z-score features with training statistics (tabular sets);
        images are scaled to [0, 1].
    """
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction and test_fraction must be in (0, 1) and sum below 1; got {val_fraction}, {test_fraction}."
        )
    rng = np.random.default_rng(seed)
    image_shape = None
    x_test = y_test = None
    if name in EMBEDDED:
        task = EMBEDDED[name]
        x, y = _embedded(name)
        if name == "digits":
            x, image_shape = x / 16.0, (8, 8, 1)
    elif name == "mnist":
        task = "classification"
        x, y, x_test, y_test = load_mnist_dir(data_dir)
        if len(x) == 0:
            raise ValueError(f"Dataset 'mnist' in {data_dir} is empty (0 training images).")
        x, x_test = x.reshape(len(x), -1) / 255.0, x_test.reshape(len(x_test), -1) / 255.0
        image_shape = (28, 28, 1)
    elif name.startswith("tfds:"):
        task = "classification"
        x, y, x_test, y_test = _tfds(name[5:], data_dir)
        if x.ndim == 4:
            image_shape = tuple(x.shape[1:])
            x = x.reshape(len(x), -1) / 255.0
            x_test = None if x_test is None else x_test.reshape(len(x_test), -1) / 255.0
    else:
        raise ValueError(f"Unknown dataset {name!r}; known: {list(DATASETS)}.")
    if len(x) == 0:
        raise ValueError(f"Dataset {name!r} is empty.")
    x = np.asarray(x, np.float32)
    if x_test is None:
        train_idx, val_idx, test_idx = _split_indices(len(x), (val_fraction, test_fraction), rng)
        x_test, y_test = x[test_idx], y[test_idx]
    else:
        train_idx, val_idx, _ = _split_indices(len(x), (val_fraction, 0.0), rng)
        x_test = np.asarray(x_test, np.float32)
    x_train, y_train, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    if max_train_examples and max_train_examples < len(x_train):
        x_train, y_train = x_train[:max_train_examples], y_train[:max_train_examples]
    if len(x_train) == 0 or len(x_val) == 0:
        raise ValueError(f"Dataset {name!r} leaves an empty training or validation split ({len(x)} examples).")
    if standardize and image_shape is None:
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        x_train, x_val, x_test = ((a - mean) / std for a in (x_train, x_val, x_test))
    noise_mask = None
    if task == "classification":
        num_classes = int(max(y_train.max(), y_val.max(), y_test.max())) + 1
        y_train, y_val, y_test = (np.asarray(a, np.int32) for a in (y_train, y_val, y_test))
        if label_noise > 0:
            y_train, noise_mask = noisy_labels(y_train, num_classes, label_noise, noise_kind, rng)
            if not clean_validation:
                y_val, _ = noisy_labels(y_val, num_classes, label_noise, noise_kind, rng)
    else:
        num_classes = 0
        mean_y, std_y = float(np.mean(y_train)), float(np.std(y_train)) + 1e-6
        y_train, y_val, y_test = (((np.asarray(a, np.float32) - mean_y) / std_y) for a in (y_train, y_val, y_test))
        if label_noise:
            raise ValueError("label_noise applies to classification; use outlier_fraction for regression.")
        if outlier_fraction > 0:
            y_train, noise_mask = _outliers(y_train, outlier_fraction, outlier_scale, rng)
            if not clean_validation:
                y_val, _ = _outliers(y_val, outlier_fraction, outlier_scale, rng)
    return Dataset(
        name,
        task,
        x_train.astype(np.float32),
        y_train,
        x_val.astype(np.float32),
        y_val,
        x_test.astype(np.float32),
        y_test,
        num_classes,
        image_shape,
        noise_mask,
    )


def from_config(config: Any, seed: int) -> Dataset:
    """:func:`load` from an ml_collections ``config.data`` block."""
    c = config
    return load(
        c.name,
        seed=seed,
        data_dir=c.get("data_dir", ""),
        val_fraction=c.get("val_fraction", 0.15),
        test_fraction=c.get("test_fraction", 0.2),
        max_train_examples=c.get("max_train_examples", 0),
        label_noise=c.get("label_noise", 0.0),
        noise_kind=c.get("noise_kind", "symmetric"),
        clean_validation=c.get("clean_validation", True),
        outlier_fraction=c.get("outlier_fraction", 0.0),
        outlier_scale=c.get("outlier_scale", 5.0),
        standardize=c.get("standardize", True),
    )
