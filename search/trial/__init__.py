"""One trial on Keras, no threads or processes: the objective (suggest, build, fit, record), the fit
itself with early stopping, epoch checkpoints, the time breakdown and the frozen-base feature cache.

Importing it loads Keras: only the worker's session (search.worker, after placement) and
`evaluate` do.
"""

from search.trial._checkpoints import Checkpoints, StopRequest
from search.trial._extras import check_extras
from search.trial._features import ensure_features, full_model, trial_builder
from search.trial._fine_tune import FineTuning
from search.trial._metrics import BalancedAccuracy, MacroF1
from search.trial._objective import Objective
from search.trial._train import (
    FitOptions,
    ModelBuilder,
    TrainResult,
    fit_all,
    freeze_setup,
    image_model,
    load_model,
    release,
    train,
)

__all__ = [
    "BalancedAccuracy",
    "Checkpoints",
    "FineTuning",
    "FitOptions",
    "MacroF1",
    "ModelBuilder",
    "Objective",
    "StopRequest",
    "TrainResult",
    "check_extras",
    "ensure_features",
    "fit_all",
    "freeze_setup",
    "full_model",
    "image_model",
    "load_model",
    "release",
    "train",
    "trial_builder",
]
