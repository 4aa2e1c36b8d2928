"""Shared test helpers."""

import subprocess

from configs import test as test_config
from slf_tf.training.config_checks import with_overrides


def config(**overrides):
    """``configs/test.py`` with dotted overrides, e.g. ``config(**{"model.name": "cnn"}, seed=1)``."""
    return with_overrides(test_config.get_config(), overrides)


def run_side_by_side(commands, *, cwd, timeout=300):
    """Runs independent ``(command, environment)`` subprocesses at once and waits for all: each spends its
    first seconds importing TensorFlow, so two trainers take little longer than one."""
    procs = [
        subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd, env in commands
    ]
    done = []
    for (cmd, _), proc in zip(commands, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr))
    return done
