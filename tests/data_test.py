"""Tests of slf_tf.data: IDX files, deterministic splits, label noise, outliers, bad input."""

import gzip
import os
import struct

import helpers
import numpy as np
import pytest

from slf_tf import data

SHARED_MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


def _write_idx(path, array, compress):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(payload)


def _fake_mnist(directory, compress, n_train=60, n_test=20):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        suffix = ".gz" if compress else ""
        _write_idx(
            os.path.join(directory, f"{split}-images-idx3-ubyte{suffix}"),
            rng.integers(0, 256, (n, 28, 28)).astype(np.uint8),
            compress,
        )
        _write_idx(
            os.path.join(directory, f"{split}-labels-idx1-ubyte{suffix}"),
            (np.arange(n) % 10).astype(np.uint8),
            compress,
        )


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_from_idx_dir(tmp_path, compress):
    _fake_mnist(str(tmp_path), compress)
    ds = data.load("mnist", data_dir=str(tmp_path), val_fraction=0.25)
    assert ds.image_shape == (28, 28, 1) and ds.x_train.shape[1] == 784 and ds.num_classes == 10
    assert len(ds.x_train) == 45 and len(ds.x_val) == 15 and len(ds.x_test) == 20
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    np.testing.assert_array_equal(ds.y_test, np.arange(20) % 10)


def test_idx_roundtrip_and_int32(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    _write_idx(str(tmp_path / "a.idx"), a, False)
    np.testing.assert_array_equal(data.load_idx(str(tmp_path / "a.idx")), a)


def test_truncated_and_corrupt_idx(tmp_path):
    _fake_mnist(str(tmp_path), compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt: shape"):
        data.load("mnist", data_dir=str(tmp_path))
    path.write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(ValueError, match="is not an IDX file"):
        data.load("mnist", data_dir=str(tmp_path))
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="Cannot read IDX file"):
        data.load_idx(str(tmp_path / "bad.gz"))


def test_fashion_mnist_reads_the_same_format_and_names_the_debian_package(tmp_path, monkeypatch):
    _fake_mnist(str(tmp_path), True)
    ds = data.load("fashion_mnist", data_dir=str(tmp_path), val_fraction=0.25)
    assert ds.image_shape == (28, 28, 1) and len(ds.x_test) == 20
    monkeypatch.setitem(data.IDX_DATASETS, "fashion_mnist", ("Fashion-MNIST", str(tmp_path / "absent"), "apt"))
    with pytest.raises(ValueError, match=r"Fashion-MNIST needs data_dir.*absent.*which is not a directory: apt"):
        data.load("fashion_mnist")
    assert data.IDX_DATASETS["mnist"][1] == ""  # MNIST has no default place


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="apt-get install dataset-fashion-mnist"
)
def test_real_fashion_mnist_from_the_debian_package():
    ds = data.load("fashion_mnist", val_fraction=0.1)
    assert len(ds.x_train) + len(ds.x_val) == 60_000 and len(ds.x_test) == 10_000 and ds.num_classes == 10


def test_missing_idx_files_and_missing_dir(tmp_path):
    with pytest.raises(ValueError, match="lacks the MNIST IDX file"):
        data.load("mnist", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="which is not a directory"):
        data.load("mnist", data_dir=str(tmp_path / "nope"))


@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST), reason="the shared real MNIST copy is not present")
@pytest.mark.slow
def test_real_mnist_counts():
    ds = data.load("mnist", data_dir=SHARED_MNIST, val_fraction=0.1)
    assert len(ds.x_train) + len(ds.x_val) == 60_000 and len(ds.x_test) == 10_000
    counts = np.bincount(np.concatenate([ds.y_train, ds.y_val]), minlength=10)
    np.testing.assert_array_equal(counts, [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])


@pytest.mark.parametrize("name", ["digits", "breast_cancer", "wine", "diabetes"])
def test_embedded_splits_are_deterministic_and_disjoint(name):
    a, b, c = data.load(name, seed=3), data.load(name, seed=3), data.load(name, seed=4)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train[:5], c.x_train[:5])
    rows = {tuple(r) for r in a.x_test}
    assert not any(tuple(r) in rows for r in a.x_train[:200])  # the test split is held out
    assert a.task == data.EMBEDDED[name]


def test_digits_are_images_and_standardisation_uses_train_stats():
    d = data.load("digits")
    assert d.image_shape == (8, 8, 1) and d.input_shape == (64,) and d.num_classes == 10
    w = data.load("wine")
    np.testing.assert_allclose(w.x_train.mean(0), 0.0, atol=1e-4)


@pytest.mark.parametrize("kind", ["symmetric", "pair"])
def test_label_noise_rate_and_kind(kind):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 20_000)
    noisy, mask = data.noisy_labels(labels, 10, 0.4, kind, rng)
    assert abs(mask.mean() - 0.4) < 0.015
    assert np.all(noisy[mask] != labels[mask]) and np.all(noisy[~mask] == labels[~mask])
    if kind == "pair":
        np.testing.assert_array_equal(noisy[mask], (labels[mask] + 1) % 10)
    else:  # uniform over the other 9 classes
        shifts = np.bincount((noisy[mask] - labels[mask]) % 10, minlength=10)[1:]
        assert shifts.min() > 0.8 * shifts.mean()


def test_noise_applies_to_train_and_optionally_validation():
    clean = data.load("digits", seed=1)
    noisy = data.load("digits", seed=1, label_noise=0.4)
    assert abs(np.mean(noisy.y_train != clean.y_train) - 0.4) < 0.05
    np.testing.assert_array_equal(noisy.y_val, clean.y_val)
    np.testing.assert_array_equal(noisy.y_test, clean.y_test)
    dirty_val = data.load("digits", seed=1, label_noise=0.4, clean_validation=False)
    assert np.mean(dirty_val.y_val != clean.y_val) > 0.25


def test_regression_outliers():
    clean = data.load("diabetes", seed=0)
    out = data.load("diabetes", seed=0, outlier_fraction=0.1, outlier_scale=5.0)
    moved = np.abs(out.y_train - clean.y_train) > 1.0
    assert 0.05 < moved.mean() < 0.15
    np.testing.assert_array_equal(out.y_test, clean.y_test)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "cifar"}, r"Unknown dataset 'cifar'; known: \['digits'"),
        ({"name": "digits", "label_noise": 1.5}, r"label noise rate must be in \[0, 1\); got 1.5"),
        ({"name": "digits", "label_noise": 0.2, "noise_kind": "asym"}, "Unknown label noise kind 'asym'"),
        ({"name": "digits", "val_fraction": 0.0}, "val_fraction and test_fraction"),
        ({"name": "diabetes", "label_noise": 0.2}, "use outlier_fraction for regression"),
        ({"name": "tfds:fashion_mnist"}, "tfds:fashion_mnist"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load(**kwargs)


def test_empty_dataset(tmp_path):
    _fake_mnist(str(tmp_path), compress=False, n_train=0, n_test=0)
    with pytest.raises(ValueError, match="is empty"):
        data.load("mnist", data_dir=str(tmp_path))


def test_summary_gives_the_realised_and_the_requested_noise():
    ds = data.load("digits", seed=0, label_noise=0.4)
    realised = ds.noise_mask_train.mean()
    assert f"{realised:.0%} of train corrupted (requested 40%)" in ds.summary()


@pytest.mark.parametrize("name", ["digits", "digits_boxes"])
def test_the_selection_split_is_the_held_out_tail_of_the_validation_split(name):
    full = data.load(name, seed=3)
    held = data.hold_out_selection(full, 0.25)
    n = len(full.x_val)
    assert len(held.x_select) == round(0.25 * n) and len(held.x_val) == n - round(0.25 * n)
    np.testing.assert_array_equal(np.concatenate([held.x_val, held.x_select]), full.x_val)  # a partition
    for a, b, whole in zip(*(_outputs(y) for y in (held.y_val, held.y_select, full.y_val)), strict=True):
        np.testing.assert_array_equal(np.concatenate([a, b]), whole)
    np.testing.assert_array_equal(held.x_train, full.x_train)
    np.testing.assert_array_equal(held.x_test, full.x_test)
    assert f"val {n - round(0.25 * n)}, selection {round(0.25 * n)}," in held.summary()
    assert data.hold_out_selection(full, 0.0) is full and full.x_select is None


def _outputs(y):
    return [y[k] for k in sorted(y)] if isinstance(y, dict) else [y]


def test_from_config_holds_out_the_selection_split():
    config = helpers.config(**{"data.selection_fraction": 0.5})
    ds = data.from_config(config.data, seed=0)
    whole = data.from_config(helpers.config().data, seed=0)
    assert len(ds.x_select) + len(ds.x_val) == len(whole.x_val) and len(ds.x_select) == round(0.5 * len(whole.x_val))


@pytest.mark.parametrize(
    "fraction,n_val,match",
    [
        (1.0, 100, r"selection_fraction must be in \[0, 1\); got 1.0"),
        (-0.1, 100, r"selection_fraction must be in \[0, 1\); got -0.1"),
        (0.001, 100, "leaves 0 for selection and 100 for training the decision; both need at least one"),
        (0.9, 2, "leaves 2 for selection and 0 for training the decision"),
    ],
)
def test_a_selection_split_that_leaves_a_part_empty_is_refused(fraction, n_val, match):
    ds = data.load("digits", seed=0)
    small = data.Dataset(
        ds.name,
        ds.task,
        ds.x_train,
        ds.y_train,
        ds.x_val[:n_val],
        ds.y_val[:n_val],
        ds.x_test,
        ds.y_test,
        ds.num_classes,
    )
    with pytest.raises(ValueError, match=match):
        data.hold_out_selection(small, fraction)
