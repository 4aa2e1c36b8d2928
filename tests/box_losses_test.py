"""Box losses (IoU, GIoU, DIoU) against hand-computed values, degenerate boxes and Keras' reduction."""

import numpy as np
import pytest
import tensorflow as tf

import slf_tf
from slf_tf import losses

BOXES = ("iou", "giou", "diou")


def _values(pred, target):
    pred, target = np.asarray(pred, np.float32), np.asarray(target, np.float32)
    return {name: losses.get(name, task="regression")(target, pred).numpy() for name in BOXES}


def test_overlapping_boxes():
    # (0,0,2,2) and (1,1,3,3): intersection 1, union 7, enclosing box (0,0,3,3): area 9, diagonal^2 18;
    # centres (1,1) and (2,2): distance^2 2.
    got = _values([[0, 0, 2, 2]], [[1, 1, 3, 3]])
    np.testing.assert_allclose(got["iou"], [1 - 1 / 7], rtol=1e-5)
    np.testing.assert_allclose(got["giou"], [1 - 1 / 7 + 2 / 9], rtol=1e-5)
    np.testing.assert_allclose(got["diou"], [1 - 1 / 7 + 2 / 18], rtol=1e-5)


def test_boxes_that_do_not_overlap():
    # (0,0,1,1) and (2,2,3,3): IoU 0, union 2, enclosing area 9; centres 2*sqrt(2) apart, diagonal^2 18.
    got = _values([[0, 0, 1, 1]], [[2, 2, 3, 3]])
    np.testing.assert_allclose(got["iou"], [1.0], rtol=1e-6)
    np.testing.assert_allclose(got["giou"], [1 + 7 / 9], rtol=1e-5)
    np.testing.assert_allclose(got["diou"], [1 + 8 / 18], rtol=1e-5)


def test_identical_boxes_cost_nothing():
    for name, value in _values([[0.5, 1.0, 2.5, 4.0]], [[0.5, 1.0, 2.5, 4.0]]).items():
        np.testing.assert_allclose(value, [0.0], atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "pred,target",
    [
        ([[1, 1, 1, 1]], [[1, 1, 1, 1]]),  # two identical points: every area and the diagonal are 0
        ([[0, 0, 0, 2]], [[0, 0, 2, 2]]),  # a zero-width prediction
        ([[3, 3, 1, 1]], [[0, 0, 2, 2]]),  # an inverted prediction (x_max < x_min): zero width and height
    ],
)
def test_degenerate_boxes_give_finite_losses_and_gradients(pred, target):
    pred = tf.constant(pred, tf.float32)
    for name in BOXES:
        with tf.GradientTape() as tape:
            tape.watch(pred)
            value = losses.get(name, task="regression")(np.asarray(target, np.float32), pred)
        grad = tape.gradient(value, pred)
        assert np.all(np.isfinite(value.numpy())) and np.all(np.isfinite(grad.numpy())), (name, value, grad)
        assert 0.0 <= float(value[0]) <= 2.0 + 1e-6, (name, value)


def test_giou_pulls_apart_boxes_together_where_iou_gives_no_gradient():
    pred = tf.constant([[0.0, 0.0, 1.0, 1.0]])
    target = np.array([[2.0, 2.0, 3.0, 3.0]], np.float32)
    grads = {}
    for name in BOXES:
        with tf.GradientTape() as tape:
            tape.watch(pred)
            value = losses.get(name, task="regression")(target, pred)
        grads[name] = tape.gradient(value, pred).numpy()
    assert np.all(grads["iou"] == 0)
    assert np.all(grads["giou"][0, 2:] < 0) and np.all(grads["diou"][0, 2:] < 0)  # grow towards the target


def test_boxes_per_position_in_a_bag_with_l1():
    """Several boxes per example ([batch, boxes, 4]): one loss per box, the example's mean over its boxes."""
    r = np.random.default_rng(0)
    corner = r.uniform(0, 5, (3, 2, 2)).astype(np.float32)
    target = np.concatenate([corner, corner + r.uniform(0.5, 2, (3, 2, 2))], axis=-1)
    pred = (target + r.normal(0, 0.3, target.shape)).astype(np.float32)
    bag = losses.LossBag(["mae", "giou"], task="regression")
    out = bag(target, pred).numpy()
    assert out.shape == (3, 2)
    per_box = losses.get("giou", task="regression").per_position(target, pred).numpy()
    np.testing.assert_allclose(out[:, 1], per_box.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(out[:, 0], np.abs(pred - target).mean(axis=(1, 2)), rtol=1e-6)
    loss = slf_tf.StochasticLoss(["huber", "giou"], task="regression", k=1)
    assert np.isfinite(float(loss(target, pred)))


def test_a_box_loss_on_other_shapes_says_what_a_box_is():
    with pytest.raises(ValueError, match=r"boxes \[\.\.\., 4\] as corners \(x_min, y_min, x_max, y_max\)"):
        losses.get("giou", task="regression")(np.zeros([2, 3], np.float32), np.zeros([2, 3], np.float32))
