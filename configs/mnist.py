"""SLF on MNIST read from a directory of the four standard IDX files (gzipped or not).

Run:  python -m trainers.classify --config configs/mnist.py --workdir runs/mnist \
          --config.data.data_dir=/path/to/mnist
(on this project's machines a copy lives in ../shared/data/mnist)
Options: --config.model.name=cnn for the small CNN; --config.data.label_noise=0.4 for noisy labels.
Runtime: about 1 minute on a 2-core CPU (MLP, 3,000 steps of 128, hypergradient every 5 steps).
Expected: test accuracy about 0.98 (MLP; measured 0.982).
"""

from configs import digits


def get_config():
    config = digits.get_config()
    config.data.name = "mnist"
    config.data.data_dir = ""  # required: a directory with the IDX files
    config.data.val_fraction = 0.05
    config.num_train_steps = 3000
    config.batch_size = 128
    config.log_every_steps = 200
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 1000
    config.model.hidden_units = (256, 128)
    config.decision.every = 5
    return config
