"""slf_tf: the Stochastic Loss Function (Liu & Lai, AAAI 2020) in TensorFlow/Keras.

The discrete-sampling toolkit (Gumbel-Max, Gumbel-Softmax, straight-through,
score function, Intermediate Loss Sampling) is importable on its own.
"""

from slf_tf import (
    callbacks,
    decision,
    estimators,
    heads,
    hypergrad,
    layers,
    losses,
    metrics,
    rng,
    schedules,
    selection,
    train_step,
    transition,
)
from slf_tf.example_weighting import JointLoss, L2RWLoss, MetaWeightNetLoss
from slf_tf.gumbel import (
    gumbel_cdf,
    gumbel_log_cdf,
    gumbel_log_pdf,
    gumbel_max,
    gumbel_noise,
    gumbel_pdf,
    gumbel_sample,
    gumbel_softmax,
    inclusion_probabilities,
    log_gumbel_softmax,
    multi_gumbel_softmax,
    straight_through,
)
from slf_tf.heads import HeadLosses
from slf_tf.keras_model import SLFModel
from slf_tf.layers import BinaryGate, GumbelSoftmax
from slf_tf.stochastic_loss import (
    CombinedLoss,
    FixedLoss,
    RandomLoss,
    SoftAdaptLoss,
    StochasticLoss,
    UncertaintyLoss,
    UniformLoss,
    create_loss,
)

__version__ = "0.1.0"

__all__ = [
    "BinaryGate",
    "CombinedLoss",
    "FixedLoss",
    "HeadLosses",
    "JointLoss",
    "L2RWLoss",
    "MetaWeightNetLoss",
    "RandomLoss",
    "SLFModel",
    "SoftAdaptLoss",
    "StochasticLoss",
    "UncertaintyLoss",
    "UniformLoss",
    "callbacks",
    "create_loss",
    "decision",
    "heads",
    "hypergrad",
    "losses",
    "metrics",
    "selection",
    "train_step",
    "transition",
    "GumbelSoftmax",
    "estimators",
    "gumbel_cdf",
    "gumbel_log_cdf",
    "gumbel_log_pdf",
    "gumbel_max",
    "gumbel_noise",
    "gumbel_pdf",
    "gumbel_sample",
    "gumbel_softmax",
    "inclusion_probabilities",
    "layers",
    "log_gumbel_softmax",
    "multi_gumbel_softmax",
    "rng",
    "schedules",
    "straight_through",
]
