"""Datasets, deterministic splits, label noise and outliers (docs/design.md, "Data").

Sources, by ``name``:
  * embedded, offline (scikit-learn's bundled files): ``digits`` (8x8 handwritten
    digits, 1,797 images), ``breast_cancer``, ``wine`` (classification),
    ``diabetes`` (regression);
  * ``mnist``: a directory holding the four standard IDX files
    (``train-images-idx3-ubyte[.gz]`` ...), gzipped or not;
  * ``fashion_mnist``: the same four files of Fashion-MNIST, by default where
    Debian's ``dataset-fashion-mnist`` package puts them
    (``/usr/share/datasets/fashion-mnist``), or in ``data_dir``;
  * ``tfds:<name>`` (e.g. ``tfds:fashion_mnist``): a TensorFlow Datasets set
    already prepared in ``data_dir`` (checked first: offline, TFDS retries for
    minutes before failing);
  * ``digits_boxes`` (several outputs): each digit pasted at a random place and
    scale on a ``canvas x canvas`` image, with two targets, its class
    (``label``) and its box (``box``, corners as fractions of the canvas).

Splits (train / decision-validation / test) are a pure function of the seed; the
test split is never seen in training. Label noise (``symmetric`` or
``pair``-flip), regression outliers and box noise (jitter, random boxes) apply to
the training split, and to the validation split unless ``clean_validation``.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import struct
from typing import Any

import numpy as np
from absl import logging

__all__ = [
    "DATASETS",
    "NOISE_KINDS",
    "Dataset",
    "Raw",
    "MULTI_OUTPUT",
    "check_class_labels",
    "corrupt",
    "dataset_task",
    "load",
    "load_idx",
    "load_digits_boxes",
    "load_mnist_dir",
    "noisy_boxes",
    "noisy_labels",
    "paste",
    "read",
    "split",
]

EMBEDDED = {
    "digits": "classification",
    "breast_cancer": "classification",
    "wine": "classification",
    "diabetes": "regression",
}
# IDX datasets -> (display name, default directory, how to get the files).
IDX_DATASETS = {
    "mnist": ("MNIST", "", "point data_dir at a directory with the four MNIST IDX files"),
    "fashion_mnist": (
        "Fashion-MNIST",
        "/usr/share/datasets/fashion-mnist",
        "install them with `apt-get install dataset-fashion-mnist` (Debian), or point data_dir at the four IDX files",
    ),
}
#: Datasets with several outputs -> {output: its kind} (``classification``, ``box``: corners in [0, 1]).
MULTI_OUTPUT = {"digits_boxes": {"label": "classification", "box": "box"}}
DATASETS = (*EMBEDDED, *IDX_DATASETS, *MULTI_OUTPUT, "tfds:<name>")
NOISE_KINDS = ("symmetric", "pair")
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def dataset_task(name: str) -> str:
    """What a dataset trains: ``classification``, ``regression`` or ``multi_output`` (a dict of targets)."""
    if name in MULTI_OUTPUT:
        return "multi_output"
    return EMBEDDED.get(name, "classification")


@dataclasses.dataclass
class Dataset:
    """Arrays of one task, split three ways. ``x_*`` float32; ``y_*`` int32 labels or float32 targets,
    or for ``multi_output`` a dict ``{output: targets}`` whose kinds :attr:`outputs` names."""

    name: str
    task: str  # "classification" | "regression" | "multi_output"
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int  # 0 for regression
    image_shape: tuple[int, ...] | None = None  # (H, W, C) when the rows are images
    noise_mask_train: np.ndarray | None = None  # True where a label/target was corrupted
    noise_requested: float = 0.0  # the probability each training label/target was corrupted with
    outputs: dict[str, str] | None = None  # multi_output: {output: "classification" | "box"}, in model order
    # The selection split (:func:`hold_out_selection`): clean validation examples that no training step reads,
    # for evaluations and the best checkpoint only; None: the validation split serves both.
    x_select: np.ndarray | None = None
    y_select: Any = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def summary(self) -> str:
        noisy = ""
        if self.noise_mask_train is not None:  # each example is corrupted with that probability: the share varies
            noisy = f", {self.noise_mask_train.mean():.0%} of train corrupted (requested {self.noise_requested:.0%})"
        select = "" if self.x_select is None else f", selection {len(self.x_select)}"
        return (
            f"{self.name} ({self.task}): train {len(self.x_train)}, val {len(self.x_val)}{select}, "
            f"test {len(self.x_test)}, input {self.input_shape}"
            + (f", {self.num_classes} classes" if self.num_classes else "")
            + (f", outputs {self.outputs}" if self.outputs else "")
            + noisy
        )


# --------------------------------------------------------------------------- #
# IDX files (MNIST).
# --------------------------------------------------------------------------- #

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path: str, max_bytes: float = 4 * 2**30) -> np.ndarray:
    """Reads one IDX file (gzipped or not); raises ``ValueError`` on a truncated, corrupt or oversized file.

    The header is read first, so a file that would expand beyond ``max_bytes`` of
    data (a small ``.gz`` can hold gigabytes) is refused before it is read.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise ValueError(f"{path} is not an IDX file (bad magic number {head!r}).")
            ndim = head[3]
            if ndim == 0:
                raise ValueError(f"{path} declares 0 dimensions; an IDX data file needs at least one.")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"{path} is truncated: the header needs {4 + 4 * ndim} bytes.")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
            if expected > max_bytes:
                raise ValueError(
                    f"{path} declares shape {shape}: {expected / 2**30:.1f} GiB of data, over the "
                    f"{max_bytes / 2**30:.1f} GiB cap (data.max_load_gb). Raise the cap if that is intended."
                )
            logging.info("Reading %s: shape %s, %.1f MB.", path, shape, expected / 2**20)
            data = f.read(expected + 1)
    except (OSError, EOFError) as e:
        raise ValueError(f"Cannot read IDX file {path}: {e}.") from None
    if len(data) != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: shape {shape} needs {expected} bytes of data, found {len(data)}."
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _find_idx(data_dir: str, stem: str) -> str:
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(stem)


def load_mnist_dir(
    data_dir: str, max_bytes: float = 4 * 2**30, name: str = "mnist"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` from a directory of the four MNIST-format IDX files."""
    label, _, how = IDX_DATASETS[name]
    if not data_dir or not os.path.isdir(data_dir):
        raise ValueError(
            f"{label} needs data_dir pointing at a directory with the four IDX files {sorted(MNIST_FILES.values())} "
            f"(optionally .gz); got data_dir={data_dir!r}, which is not a directory: {how}."
        )
    paths, missing = {}, []
    for key, stem in MNIST_FILES.items():
        try:
            paths[key] = _find_idx(data_dir, stem)
        except FileNotFoundError:
            missing.append(stem)
    if missing:
        raise ValueError(f"{data_dir} lacks the {label} IDX file(s) {missing} (plain or .gz): {how}.")
    arrays = {key: load_idx(path, max_bytes) for key, path in paths.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise ValueError(f"{label} {split} images and labels differ in length in {data_dir}.")
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


@dataclasses.dataclass
class Raw:
    """A dataset as read from its source, before splitting: ``x`` flattened to float32 rows."""

    name: str
    task: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None  # sets that ship a test split keep it
    y_test: np.ndarray | None = None
    image_shape: tuple[int, ...] | None = None


def read(name: str, data_dir: str = "", max_bytes: float = 4 * 2**30) -> Raw:
    """Reads ``name`` (see :func:`load`); images are flattened and scaled to [0, 1]."""
    if name in EMBEDDED:
        x, y = _embedded(name)
        if name == "digits":
            return Raw(name, EMBEDDED[name], x / 16.0, y, image_shape=(8, 8, 1))
        return Raw(name, EMBEDDED[name], x, y)
    if name in IDX_DATASETS:
        data_dir = data_dir or IDX_DATASETS[name][1]
        x, y, x_test, y_test = load_mnist_dir(data_dir, max_bytes, name)
        if len(x) == 0:
            raise ValueError(f"Dataset {name!r} in {data_dir} is empty (0 training images).")
        x, x_test = (a.reshape(len(a), -1) / 255.0 for a in (x, x_test))
        return Raw(name, "classification", x, y, x_test, y_test, (28, 28, 1))
    if name.startswith("tfds:"):
        x, y, x_test, y_test = _tfds(name[5:], data_dir)
        image_shape = tuple(x.shape[1:]) if x.ndim == 4 else None
        if image_shape:
            x = x.reshape(len(x), -1) / 255.0
            x_test = None if x_test is None else x_test.reshape(len(x_test), -1) / 255.0
        return Raw(name, "classification", x, y, x_test, y_test, image_shape)
    raise ValueError(f"Unknown dataset {name!r}; known: {list(DATASETS)}.")


def split(
    raw: Raw,
    rng: np.random.Generator,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    max_train_examples: int = 0,
    standardize: bool = True,
) -> Dataset:
    """Train / decision-validation / test splits drawn from ``rng``; z-scored features, standardised targets."""
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction and test_fraction must be in (0, 1) and sum below 1; got {val_fraction}, {test_fraction}."
        )
    if len(raw.x) == 0:
        raise ValueError(f"Dataset {raw.name!r} is empty.")
    x, y = np.asarray(raw.x, np.float32), raw.y
    if raw.x_test is None:
        train_idx, val_idx, test_idx = _split_indices(len(x), (val_fraction, test_fraction), rng)
        x_test, y_test = x[test_idx], y[test_idx]
    else:
        train_idx, val_idx, _ = _split_indices(len(x), (val_fraction, 0.0), rng)
        x_test, y_test = np.asarray(raw.x_test, np.float32), raw.y_test
    x_train, y_train, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    if max_train_examples and max_train_examples < len(x_train):
        x_train, y_train = x_train[:max_train_examples], y_train[:max_train_examples]
    if len(x_train) == 0 or len(x_val) == 0:
        raise ValueError(f"Dataset {raw.name!r} leaves an empty training or validation split ({len(x)} examples).")
    if standardize and raw.image_shape is None:
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        x_train, x_val, x_test = ((a - mean) / std for a in (x_train, x_val, x_test))
    if raw.task == "classification":
        num_classes = check_class_labels(raw.name, y_train, y_val, y_test)
        y_train, y_val, y_test = (np.asarray(a, np.int32) for a in (y_train, y_val, y_test))
    else:
        num_classes = 0
        mean_y, std_y = float(np.mean(y_train)), float(np.std(y_train)) + 1e-6
        y_train, y_val, y_test = (((np.asarray(a, np.float32) - mean_y) / std_y) for a in (y_train, y_val, y_test))
    xs = (a.astype(np.float32) for a in (x_train, x_val, x_test))
    x_train, x_val, x_test = xs
    return Dataset(raw.name, raw.task, x_train, y_train, x_val, y_val, x_test, y_test, num_classes, raw.image_shape)


def check_class_labels(name: str, y_train: np.ndarray, y_val: np.ndarray, y_test: np.ndarray) -> int:
    """The number of classes, after checking the labels are whole class ids 0..C-1 that training can see.

    Raises ``ValueError`` for non-finite, fractional or negative labels, ids that
    leave gaps (e.g. a label 200 among 0-9), and classes that appear only in the
    test split (the model could never learn them).
    """
    splits = {"train": np.asarray(y_train), "validation": np.asarray(y_val), "test": np.asarray(y_test)}
    for split, y in splits.items():
        bad = ~np.isfinite(y) | (y != np.round(y)) | (y < 0) if y.dtype.kind == "f" else (y < 0)
        if np.any(bad):
            raise ValueError(
                f"Dataset {name!r}: the {split} labels must be whole class ids >= 0; found {np.unique(y[bad])[:5]}."
            )
    seen = np.unique(np.concatenate([splits["train"], splits["validation"]]).astype(np.int64))
    only_test = np.setdiff1d(np.unique(splits["test"].astype(np.int64)), seen)
    if len(only_test):
        raise ValueError(f"Dataset {name!r}: classes {only_test[:10].tolist()} appear only in the test split.")
    num_classes = int(seen.max()) + 1
    missing = np.setdiff1d(np.arange(num_classes), seen)
    if len(missing):
        raise ValueError(
            f"Dataset {name!r}: class ids run up to {num_classes - 1} but {missing[:10].tolist()}"
            f"{' ...' if len(missing) > 10 else ''} never occur in training; labels must be 0..C-1."
        )
    return num_classes


def corrupt(
    dataset: Dataset,
    rng: np.random.Generator,
    *,
    label_noise: float = 0.0,
    noise_kind: str = "symmetric",
    clean_validation: bool = True,
    outlier_fraction: float = 0.0,
    outlier_scale: float = 5.0,
) -> Dataset:
    """Label noise (classification) or target outliers (regression) in the training split, and the
    validation split unless ``clean_validation``; the test split is never touched."""
    d = dataclasses.replace(dataset)
    if d.task == "classification":
        if label_noise > 0:
            d.y_train, d.noise_mask_train = noisy_labels(d.y_train, d.num_classes, label_noise, noise_kind, rng)
            d.noise_requested = label_noise
            if not clean_validation:
                d.y_val, _ = noisy_labels(d.y_val, d.num_classes, label_noise, noise_kind, rng)
        return d
    if label_noise:
        raise ValueError("label_noise applies to classification; use outlier_fraction for regression.")
    if outlier_fraction > 0:
        d.y_train, d.noise_mask_train = _outliers(d.y_train, outlier_fraction, outlier_scale, rng)
        d.noise_requested = outlier_fraction
        if not clean_validation:
            d.y_val, _ = _outliers(d.y_val, outlier_fraction, outlier_scale, rng)
    return d


# --------------------------------------------------------------------------- #
# Several outputs: digits on a canvas, with their boxes.
# --------------------------------------------------------------------------- #


def paste(images: np.ndarray, canvas: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[n, canvas, canvas, 1]`` with each 8x8 digit (values 0..16) at a random scale and place,
    and their boxes ``[n, 4]`` (corners ``x_min, y_min, x_max, y_max`` as fractions of the canvas)."""
    import tensorflow as tf  # the bilinear resize; imported here so that reading tabular data needs no TF

    n = len(images)
    sizes = rng.integers(canvas // 4, canvas * 5 // 8 + 1, size=n)
    out = np.zeros((n, canvas, canvas, 1), np.float32)
    boxes = np.zeros((n, 4), np.float32)
    for i, (image, size) in enumerate(zip(images, sizes, strict=True)):
        patch = tf.image.resize(image.reshape(8, 8, 1) / 16.0, (size, size), method="bilinear").numpy()
        x0, y0 = rng.integers(0, canvas - size + 1, size=2)
        out[i, y0 : y0 + size, x0 : x0 + size] = patch
        boxes[i] = np.array([x0, y0, x0 + size, y0 + size]) / canvas
    return out, boxes


def noisy_boxes(boxes: np.ndarray, jitter: float, outliers: float, rng: np.random.Generator) -> np.ndarray:
    """Boxes with Gaussian jitter (std ``jitter``) on every corner, and a share ``outliers`` replaced by random
    boxes (the box analogue of label noise: an annotation unrelated to the image)."""
    if not 0.0 <= outliers < 1.0:
        raise ValueError(f"the share of random boxes must be in [0, 1); got {outliers!r}.")
    noisy = boxes + rng.normal(0.0, jitter, boxes.shape)
    wild = rng.random(len(boxes)) < outliers
    corners = rng.random((int(wild.sum()), 2, 2))
    noisy[wild] = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    return noisy.astype(np.float32)


def load_digits_boxes(
    *,
    seed: int = 0,
    canvas: int = 32,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    max_train_examples: int = 0,
    label_noise: float = 0.0,
    noise_kind: str = "symmetric",
    clean_validation: bool = True,
    box_jitter: float = 0.0,
    outlier_fraction: float = 0.0,
    copies: int = 1,
) -> Dataset:
    """``digits_boxes``: scikit-learn's digits (bundled) pasted on a canvas; targets ``{"label", "box"}``.

    The digits are split first, so no digit is in two splits; each training and test
    digit is then pasted ``copies`` times (at other places and scales), each validation
    digit once. Splits, placements and noise are pure functions of ``seed``. Training labels get
    ``label_noise`` (``noise_kind``); training boxes get Gaussian ``box_jitter`` on
    each corner and a share ``outlier_fraction`` replaced by random boxes; the
    validation split too unless ``clean_validation``; the test split is clean.
    """
    from sklearn.datasets import load_digits

    if not 8 <= canvas <= 256:
        raise ValueError(f"data.canvas must be an integer in [8, 256] (the digits are 8x8); got {canvas!r}.")
    digits, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    train, val, test = _split_indices(len(digits), (val_fraction, test_fraction), rng)
    if max_train_examples and max_train_examples < len(train):
        train = train[:max_train_examples]
    if len(train) == 0 or len(val) == 0 or len(test) == 0:
        raise ValueError(f"digits_boxes leaves an empty split (train {len(train)}, val {len(val)}, test {len(test)}).")
    if isinstance(copies, bool) or not isinstance(copies, int) or not 1 <= copies <= 100:
        raise ValueError(f"data.copies must be an integer in [1, 100] (placements per digit); got {copies!r}.")
    splits = []
    for idx in (np.repeat(train, copies), val, np.repeat(test, copies)):
        images, boxes = paste(digits[idx], canvas, rng)
        splits.append((images.reshape(len(idx), -1), {"label": labels[idx].astype(np.int32), "box": boxes}))
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits
    num_classes = check_class_labels("digits_boxes", y_train["label"], y_val["label"], y_test["label"])

    def corrupt_targets(y: dict[str, np.ndarray]) -> np.ndarray | None:
        mask = None
        if label_noise > 0:
            y["label"], mask = noisy_labels(y["label"], num_classes, label_noise, noise_kind, rng)
        if box_jitter > 0 or outlier_fraction > 0:
            y["box"] = noisy_boxes(y["box"], box_jitter, outlier_fraction, rng)
        return mask

    mask = corrupt_targets(y_train)
    if not clean_validation:
        corrupt_targets(y_val)
    return Dataset(
        "digits_boxes",
        "multi_output",
        x_train,
        y_train,
        x_val,
        y_val,
        x_test,
        y_test,
        num_classes,
        image_shape=(canvas, canvas, 1),
        noise_mask_train=mask,
        noise_requested=label_noise,
        outputs=dict(MULTI_OUTPUT["digits_boxes"]),
    )


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
    max_load_gb: float = 4.0,
    canvas: int = 32,
    box_jitter: float = 0.0,
    copies: int = 1,
) -> Dataset:
    """:func:`read`, :func:`split` and :func:`corrupt`, all drawn from one generator seeded by ``seed``
    (``digits_boxes``: :func:`load_digits_boxes`).

    Args:
      name: one of ``digits``, ``breast_cancer``, ``wine``, ``diabetes``, ``mnist``, ``fashion_mnist``,
        ``tfds:<name>``.
      seed: splits, subsampling and noise are pure functions of it.
      data_dir: the IDX directory for ``mnist`` (``fashion_mnist``: Debian's by default); the TFDS root for ``tfds:``.
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
      max_load_gb: refuse files that declare more data than this (IDX headers are read first).
      canvas, box_jitter, copies: ``digits_boxes`` only: the canvas side, the Gaussian noise on training
        boxes' corners (``outlier_fraction`` is then the share of training boxes replaced by random ones),
        and the placements per training and test digit.
    """
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction and test_fraction must be in (0, 1) and sum below 1; got {val_fraction}, {test_fraction}."
        )
    if name in MULTI_OUTPUT:
        return load_digits_boxes(
            seed=seed,
            canvas=canvas,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            max_train_examples=max_train_examples,
            label_noise=label_noise,
            noise_kind=noise_kind,
            clean_validation=clean_validation,
            box_jitter=box_jitter,
            outlier_fraction=outlier_fraction,
            copies=copies,
        )
    rng = np.random.default_rng(seed)
    dataset = split(
        read(name, data_dir, max_load_gb * 2**30),
        rng,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        max_train_examples=max_train_examples,
        standardize=standardize,
    )
    return corrupt(
        dataset,
        rng,
        label_noise=label_noise,
        noise_kind=noise_kind,
        clean_validation=clean_validation,
        outlier_fraction=outlier_fraction,
        outlier_scale=outlier_scale,
    )


def hold_out_selection(dataset: Dataset, fraction: float) -> Dataset:
    """Moves the last ``fraction`` of the validation split (already in random order) into the selection split.

    A strategy that learns from the validation split (SLF's decision, the example-weighting peers) fits it,
    so its score there is optimistic as a checkpoint selector; the selection split is never trained on.
    ``fraction = 0`` returns ``dataset`` unchanged; both parts must keep at least one example.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"selection_fraction must be in [0, 1); got {fraction}.")
    if fraction == 0:
        return dataset
    n = len(dataset.x_val)
    n_select = int(round(fraction * n))
    if not 0 < n_select < n:
        raise ValueError(
            f"selection_fraction={fraction} of the {n} validation examples leaves {n_select} for selection and "
            f"{n - n_select} for training the decision; both need at least one."
        )
    keep, held = slice(0, n - n_select), slice(n - n_select, n)
    return dataclasses.replace(
        dataset,
        x_val=dataset.x_val[keep],
        y_val=_take(dataset.y_val, keep),
        x_select=dataset.x_val[held],
        y_select=_take(dataset.y_val, held),
    )


def _take(y: Any, part: slice) -> Any:
    """A slice of the targets: an array, or each output's array of a dict of them."""
    return {k: v[part] for k, v in y.items()} if isinstance(y, dict) else y[part]


def from_config(config: Any, seed: int) -> Dataset:
    """:func:`load` from an ml_collections ``config.data`` block, then :func:`hold_out_selection`."""
    c = config
    dataset = load(
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
        max_load_gb=c.get("max_load_gb", 4.0),
        canvas=c.get("canvas", 32),
        box_jitter=c.get("box_jitter", 0.0),
        copies=c.get("copies", 1),
    )
    return hold_out_selection(dataset, c.get("selection_fraction", 0.0))
