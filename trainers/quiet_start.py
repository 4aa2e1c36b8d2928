"""Starts TensorFlow without the lines a machine with no GPU prints on every healthy run.

TensorFlow's CUDA build reports a missing GPU as ``E... failed call to cuInit: ... (303)``, an
error-level line, before its log settings apply (``TF_CPP_MIN_LOG_LEVEL`` cannot hide it). Where
no NVIDIA device exists, those start-up lines are dropped; every other line is passed on, and on a
machine with a GPU nothing is filtered, so a real CUDA problem still shows.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

_NO_GPU_LINES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "Could not find cuda drivers on your machine, GPU will not be used.",
    "failed call to cuInit",
)


def gpu_device_present() -> bool:
    """Whether the machine has an NVIDIA device node (``/dev/nvidia0``, ...)."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def is_no_gpu_line(line: str) -> bool:
    """A start-up line that only says that this machine has no GPU."""
    return any(text in line for text in _NO_GPU_LINES)


_INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d:\d\d")  # absl's INFO prefix: I0000 00:00:1796... port.cc:153]


def is_quiet_start_line(line: str) -> bool:
    """A no-GPU line, or an INFO line (oneDNN's banner) where ``TF_CPP_MIN_LOG_LEVEL`` asks for none: TensorFlow
    prints those before its log settings apply. Warnings and errors always pass."""
    try:
        min_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        min_level = 0
    return is_no_gpu_line(line) or (min_level >= 1 and bool(_INFO_LINE.match(line)))


@contextlib.contextmanager
def filtered_stderr(drop: Callable[[str], bool]) -> Iterator[None]:
    """Collects what is written to file descriptor 2 (C++ included) and passes on the lines not dropped."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True) if not drop(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def import_tensorflow() -> None:
    """Imports TensorFlow and lists its devices (where CUDA start-up logs), quietly on a machine with no GPU."""
    if gpu_device_present():
        import tensorflow as tf

        tf.config.list_physical_devices()
        return
    with filtered_stderr(is_quiet_start_line):
        import tensorflow as tf

        tf.config.list_physical_devices()
