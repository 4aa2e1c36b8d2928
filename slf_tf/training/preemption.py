"""What keeps a run safe to stop: SIGTERM as a flag the loop checks, and the multi-worker peer watchdog."""

from __future__ import annotations

import faulthandler
import signal
import threading
import time

import tensorflow as tf
from absl import logging

from slf_tf.training import factories

__all__ = ["PeerWatchdog", "SigtermFlag", "is_chief"]


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one process that writes the workdir (a single process, the chief, or worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


class SigtermFlag:
    """Turns SIGTERM into a flag the loop checks after each step (main thread only; else inert)."""

    def __init__(self):
        self.raised = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class PeerWatchdog:
    """Says what a multi-worker run waits for (its peers) and ends the process after ``timeout_s`` (0: never).

    TensorFlow holds the GIL while it waits for the cluster, so no Python thread can run then: the
    deadline is ``faulthandler``'s C watchdog, which dumps where the process waited and exits with status 1.
    """

    def __init__(self, timeout_s: float, every_s: float = 30.0):
        self.timeout_s, self.every_s = timeout_s, every_s
        self._done = threading.Event()
        self._start = time.time()
        cluster = factories.parse_tf_config()["cluster"]
        self._peers = ", ".join(f"{k}: {v}" for k, v in cluster.items())
        if timeout_s:
            logging.info(
                "Waiting for the multi-worker cluster (%s). If it is not up within multi_worker_timeout_s=%.0f s "
                "this process exits with status 1 after a stack dump: is every worker started, with the same "
                "TF_CONFIG cluster and its own task index?",
                self._peers,
                timeout_s,
            )
            faulthandler.dump_traceback_later(timeout_s, exit=True)
        threading.Thread(target=self._watch, daemon=True, name="peer-watchdog").start()

    def _watch(self) -> None:  # runs whenever TensorFlow lets go of the GIL (e.g. during the first step)
        while not self._done.wait(self.every_s):
            waited = time.time() - self._start
            logging.warning("Still waiting for the multi-worker cluster (%s) after %.0f s.", self._peers, waited)

    def stop(self) -> None:
        if not self._done.is_set() and self.timeout_s:
            faulthandler.cancel_dump_traceback_later()
        self._done.set()
