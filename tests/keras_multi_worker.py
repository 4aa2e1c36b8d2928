"""Test helper, not a test: one worker of a MultiWorkerMirroredStrategy `fit` with SLFModel (TF_CONFIG set).

Prints one JSON line: the loss history and the decision network's final variables.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import slf_tf  # noqa: E402


def main() -> None:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        network = keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
        )
        model = slf_tf.SLFModel(network, (x[1000:1256], y[1000:1256]), val_batch_size=64)
        loss = slf_tf.StochasticLoss(["cross_entropy", "focal(gamma=2.0)", "mae"], k=2, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
    data = tf.data.Dataset.from_tensor_slices((x[:512], y[:512])).batch(64)
    val = tf.data.Dataset.from_tensor_slices((x[1256:1384], y[1256:1384])).batch(64)
    history = model.fit(data, epochs=2, verbose=0, validation_data=val).history
    decision = [np.asarray(v).tolist() for v in loss.decision_variables]
    print(json.dumps({"loss": history["loss"], "val_loss": history["val_loss"], "decision": decision}))


if __name__ == "__main__":
    main()
