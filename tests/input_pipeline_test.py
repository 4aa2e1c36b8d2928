"""Tests of the step-indexed input pipeline: the batch of step t is a pure function of (seed, t)."""

import numpy as np
import pytest

from slf_tf.training import input_pipeline

X = np.arange(50, dtype=np.float32)[:, None]
Y = np.arange(50, dtype=np.int32)
XV = 100 + np.arange(12, dtype=np.float32)[:, None]
YV = 100 + np.arange(12, dtype=np.int32)


def _steps(start, end, batch=8, val_batch=5, seed=0, **kwargs):
    ds = input_pipeline.step_batches(
        X, Y, XV, YV, batch_size=batch, val_batch_size=val_batch, seed=seed, start_step=start, num_steps=end, **kwargs
    )
    return [tuple(np.asarray(t) for t in element) for element in ds]


def test_batch_of_a_step_depends_only_on_seed_and_step():
    straight = _steps(0, 20)
    resumed = _steps(13, 20)  # a resumed run starts at step 13
    for a, b in zip(straight[13:], resumed, strict=True):
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)
    assert [int(e[0]) for e in straight] == list(range(20))
    other_seed = _steps(0, 20, seed=1)
    assert any(not np.array_equal(a[2], b[2]) for a, b in zip(straight, other_seed, strict=True))


def test_each_epoch_is_a_permutation_of_the_training_split():
    per_epoch = len(X) // 8  # 6 full batches; the 2 examples left over wait for another epoch
    for epoch in range(3):
        labels = np.concatenate([e[2] for e in _steps(epoch * per_epoch, (epoch + 1) * per_epoch)])
        assert len(set(labels.tolist())) == len(labels) == per_epoch * 8
    first, second = (np.concatenate([e[2] for e in _steps(i * per_epoch, (i + 1) * per_epoch)]) for i in range(2))
    assert not np.array_equal(first, second)  # reshuffled every epoch


def test_validation_batches_come_from_the_validation_split_and_wrap_when_small():
    for _, _, _, xv, yv in _steps(0, 5, val_batch=20):  # 20 > 12 validation examples: wraps around
        assert len(yv) == 20 and set(yv.tolist()) == set(YV.tolist())
        np.testing.assert_array_equal(xv[:, 0], yv.astype(np.float32))


def test_replicas_take_disjoint_slices_of_the_same_global_batch():

    whole = _steps(0, 4, val_batch=6)
    halves = _steps(0, 4, val_batch=6, replica_ids=(0, 1), num_replicas=2)
    for step in range(4):
        a, b = halves[2 * step], halves[2 * step + 1]
        np.testing.assert_array_equal(np.concatenate([a[2], b[2]]), whole[step][2])
        np.testing.assert_array_equal(np.concatenate([a[4], b[4]]), whole[step][4])


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match=r"batch_size=7 must be divisible by the number of replicas \(2\)"):
        _steps(0, 1, batch=7, replica_ids=(0, 1), num_replicas=2)
    with pytest.raises(ValueError, match="Empty split"):
        input_pipeline.step_batches(
            X[:0], Y[:0], XV, YV, batch_size=4, val_batch_size=4, seed=0, start_step=0, num_steps=1
        )
