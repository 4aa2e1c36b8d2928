"""The trainers' quiet TensorFlow start: only the no-GPU lines are dropped, everything else passes."""

import os
import subprocess
import sys

import pytest

from trainers import quiet_start

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_filtered_stderr_drops_only_what_it_is_told(capfd):
    with quiet_start.filtered_stderr(quiet_start.is_no_gpu_line):
        os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error (303)\n")
        os.write(2, b"W0000 something real went wrong\n")
        print("from python", file=sys.stderr)
    err = capfd.readouterr().err
    assert "cuInit" not in err
    assert "W0000 something real went wrong\n" in err and "from python\n" in err


def test_filtered_stderr_passes_lines_on_when_the_block_raises(capfd):
    with pytest.raises(RuntimeError), quiet_start.filtered_stderr(lambda line: False):
        os.write(2, b"kept before the error\n")
        raise RuntimeError("boom")
    assert "kept before the error" in capfd.readouterr().err


@pytest.mark.skipif(quiet_start.gpu_device_present(), reason="on a machine with a GPU nothing is filtered")
def test_importing_the_trainers_prints_no_error_line_without_a_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-c", "import trainers, tensorflow as tf; print(tf.reduce_sum(tf.ones(3)).numpy())"],
        cwd=REPO,
        env={**env, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "3.0", proc.stderr
    assert "cuInit" not in proc.stderr and "E0000" not in proc.stderr, proc.stderr
    assert "oneDNN" not in proc.stderr and "I0000" not in proc.stderr, proc.stderr  # INFO, below the level asked for


def test_info_lines_are_quiet_only_below_the_level_asked_for(monkeypatch):
    banner = "I0000 00:00:1796285885.722269   25257 port.cc:153] oneDNN custom operations are on.\n"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    assert quiet_start.is_quiet_start_line(banner)
    assert not quiet_start.is_quiet_start_line("W0000 00:00:1796285885.7 something real went wrong\n")
    assert not quiet_start.is_quiet_start_line("E0000 00:00:1796285885.7 a real error\n")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    assert not quiet_start.is_quiet_start_line(banner)
