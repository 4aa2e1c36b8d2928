"""absl entry points: each main() parses flags and calls one library function.

Importing the package starts TensorFlow first, without the no-GPU start-up lines (:mod:`.quiet_start`).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from trainers import quiet_start  # noqa: E402

quiet_start.import_tensorflow()
