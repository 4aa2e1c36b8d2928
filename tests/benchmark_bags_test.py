"""The benchmarks run the default bag, `forward` included (its noise matrix needs num_classes and a restart)."""

import subprocess
import sys

from benchmarks import quality_settings
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
