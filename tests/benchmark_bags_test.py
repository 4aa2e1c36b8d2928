"""The benchmarks run the default bag, `forward` included (its noise matrix needs num_classes and a restart)."""

import subprocess
import sys

import tensorflow as tf

from benchmarks import harness, quality_settings
from configs import digits
from slf_tf import stochastic_loss


def test_the_sweep_trains_each_candidate_that_stands_alone():
    config = digits.get_config()
    assert "forward" in config.loss.candidates
    names = quality_settings.sweep_losses(config)
    assert names == [name for name in config.loss.candidates if name != "forward"]
    for name in names:  # each one builds as the fixed loss; forward would raise
        stochastic_loss.FixedLoss(list(config.loss.candidates), loss=name, num_classes=10)


_KERAS_PATHS = """
from benchmarks import step_overhead
from slf_tf import data
digits = data.load("digits", seed=0)
step_overhead._keras_variant("keras_slf_model", "mlp", digits, every=2).run_steps(2)
step_overhead._sequence_variant("keras_slf_model", every=2).run_steps(2)
print("ran")
"""


def test_the_step_overhead_keras_paths_run_the_default_bag():
    # A process of its own: benchmarks.step_overhead's absl flags share names with benchmarks.quality's.
    done = subprocess.run([sys.executable, "-c", _KERAS_PATHS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ran")


_SAME_MODEL = """
from benchmarks import step_overhead
from slf_tf import data
digits = data.load("digits", seed=0)
ce = step_overhead._plain_ce("mlp", digits)
slf = step_overhead._trainer_variant("bag_frozen", step_overhead._config("mlp"), None, digits)
shapes = lambda v: [tuple(w.shape) for w in v.model.trainable_variables]
assert shapes(ce) == shapes(slf), (shapes(ce), shapes(slf))
ce.run_steps(2)
slf.run_steps(2)
ops_ce, ops_slf = ce.graph_ops(), slf.graph_ops()
assert set(ops_slf) == {"main_step"} and 100 < ops_ce["step"] < ops_slf["main_step"], (ops_ce, ops_slf)
print("same", shapes(ce)[0])
"""


def test_the_step_overhead_baseline_is_the_model_the_trainer_variants_train():
    # The ratios compare steps of one model: the CE baseline once built the default 256-128 MLP against the
    # trainer's 128-64 (configs/digits.py).
    done = subprocess.run([sys.executable, "-c", _SAME_MODEL], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("same (64, 128)")


def test_graph_ops_counts_the_kernels_a_traced_function_runs_after_grappler():
    f = tf.function(lambda x: tf.matmul(x, x) + tf.reduce_sum(x))
    assert harness.graph_ops(f.get_concrete_function(tf.TensorSpec([2, 2]))) == 3  # MatMul, Sum, AddV2

    @tf.function
    def static_shapes(x):  # the shape arithmetic is constant-folded away when the shape is known
        return x * tf.cast(tf.shape(x)[0], tf.float32)

    folded = harness.graph_ops(static_shapes.get_concrete_function(tf.TensorSpec([4, 2])))
    dynamic = harness.graph_ops(static_shapes.get_concrete_function(tf.TensorSpec([None, 2])))
    assert folded == 1 < dynamic, (folded, dynamic)
