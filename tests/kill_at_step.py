"""Test helper, not a test: runs ``trainers.classify`` and SIGKILLs itself right after step N's checkpoint.

    SLF_TEST_KILL_AT_STEP=10 PYTHONPATH=. python tests/kill_at_step.py --config=configs/test.py --workdir=...

It dies as a preempted machine would (no cleanup), which a hook in the production loop used to do.
"""

import os
import signal

from slf_tf.training import checkpointing
from trainers import classify

_KILL_AT = int(os.environ["SLF_TEST_KILL_AT_STEP"])
_save = checkpointing.Checkpointer.save


def _save_then_die(self, step):
    path = _save(self, step)
    if step == _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return path


checkpointing.Checkpointer.save = _save_then_die

if __name__ == "__main__":
    classify.run()
