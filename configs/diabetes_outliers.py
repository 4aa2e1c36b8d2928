"""SLF regression on scikit-learn's diabetes data with 10% outliers in the training targets.

Run:  python -m trainers.regress --config configs/diabetes_outliers.py --workdir runs/diabetes
Baseline: --config.loss.strategy=fixed --config.loss.fixed=mse
Runtime: about 30 s on a 2-core CPU. Targets are standardised; 10% of training
targets are moved by +-5 standard deviations; the decision-validation split is clean.
Expected: test MAE about 0.6 (standardised units); robust candidates (huber, mae,
log_cosh) should be preferred over mse.
"""

from configs import digits


def get_config():
    config = digits.get_config()
    config.data.name = "diabetes"
    config.data.outlier_fraction = 0.1
    config.data.outlier_scale = 5.0
    config.num_train_steps = 1000
    config.batch_size = 32
    config.eval_every_steps = 250
    config.checkpoint_every_steps = 250
    config.model.hidden_units = (64, 32)
    config.loss.candidates = ("mse", "mae", "huber(delta=1.0)", "log_cosh", "quantile(tau=0.5)")
    config.loss.fixed = "mse"
    config.loss.k = 2
    config.decision.val_batch_size = 64
    return config
