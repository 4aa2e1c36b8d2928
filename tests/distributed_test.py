"""Tests of slf_tf.distributed: the cross-replica helpers, on 2 logical CPUs and outside any strategy."""

import json
import socket

import keras
import numpy as np
import pytest
import tensorflow as tf

from slf_tf import distributed
from slf_tf.training import factories


def _per_replica(strategy, fn):
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant([1.0, 2.0]) * (ctx.replica_id_in_sync_group + 1)
    )

    @tf.function
    def run(v):
        return strategy.run(fn, args=(v,))

    return [np.asarray(r) for r in strategy.experimental_local_results(run(values))]


def test_helpers_are_identities_outside_a_strategy():
    x = tf.constant([1.0, 2.0])
    assert distributed.num_replicas() == 1
    np.testing.assert_array_equal(distributed.all_sum(x).numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(distributed.all_true(tf.constant([True, False])).numpy(), [True, False])
    np.testing.assert_allclose(distributed.batch_mean(tf.constant([[1.0], [3.0]])).numpy(), [2.0])
    np.testing.assert_allclose(distributed.batch_mean(tf.constant([[1.0], [3.0]]), 8).numpy(), [0.5])


def test_all_sum_all_true_and_num_replicas_under_mirrored():
    strategy = factories.create_distribution_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    for r in _per_replica(strategy, distributed.all_sum):
        np.testing.assert_array_equal(r, [3.0, 6.0])  # 1*[1,2] + 2*[1,2] on both replicas
    for r in _per_replica(strategy, lambda v: distributed.all_true(v < 3.0)):
        np.testing.assert_array_equal(r, [True, False])  # [2, 4] on the second replica
    for r in _per_replica(strategy, lambda v: tf.fill([1], float(distributed.num_replicas()))):
        np.testing.assert_array_equal(r, [2.0])


def test_all_sum_is_differentiable():
    strategy = factories.create_distribution_strategy("mirrored")

    def grad(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = tf.reduce_sum(distributed.all_sum(v * v))
        return tape.gradient(y, v)

    results = _per_replica(strategy, grad)
    np.testing.assert_allclose(results[0], [4.0, 8.0])  # d/dv of the sum over both replicas' v^2, all-summed
    np.testing.assert_allclose(results[1], [8.0, 16.0])


@pytest.mark.parametrize("mirrored", [False, True])
def test_apply_if_applies_only_where_the_condition_holds(mirrored):
    strategy = factories.create_distribution_strategy("mirrored" if mirrored else "default")
    with strategy.scope():
        w = keras.Variable(np.zeros(2, np.float32))
        opt = keras.optimizers.SGD(1.0)
        opt.build([w])

    @tf.function
    def step(condition):
        strategy.run(lambda: distributed.apply_if(condition, opt, [tf.ones(2)], [w]))

    step(tf.constant(False))
    np.testing.assert_array_equal(w.numpy(), [0.0, 0.0])
    step(tf.constant(True))
    expected = -1.0 * strategy.num_replicas_in_sync  # the optimizer sums the replicas' gradients
    np.testing.assert_array_equal(w.numpy(), [expected, expected])


_WORKERS = {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}


@pytest.mark.parametrize(
    "tf_config, match",
    [
        ("{not json", r"TF_CONFIG is not JSON"),
        (json.dumps({"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}), r"lists no workers"),
        (json.dumps({"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}), r"'127.0.0.1'"),
        (json.dumps({"cluster": {"worker": ["h:99999"]}, "task": {"type": "worker", "index": 0}}), r"1\.\.65535"),
        (json.dumps({"cluster": _WORKERS, "task": {"type": "worker", "index": 2}}), r"task index 2 .*0\.\.1"),
        (json.dumps({"cluster": _WORKERS, "task": {"type": "chief", "index": 0}}), r"one of the cluster's roles"),
        (json.dumps({"cluster": _WORKERS}), r"needs TF_CONFIG"),
    ],
)
def test_bad_tf_config_is_refused_naming_the_variable_and_value(monkeypatch, tf_config, match):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=match):
        factories.parse_tf_config()
    with pytest.raises(ValueError, match=match):  # before any TensorFlow cluster work
        factories.create_distribution_strategy("multi_worker")


def test_a_port_in_use_is_refused_naming_it(monkeypatch):
    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        port = held.getsockname()[1]
        cluster = {"worker": [f"127.0.0.1:{port}", "127.0.0.1:1"]}
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
        with pytest.raises(ValueError, match=rf"Port {port} .* is in use"):
            factories.create_distribution_strategy("multi_worker")
