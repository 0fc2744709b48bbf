"""Pruning a study with a second objective, on the first objective's curve.

Optuna refuses `trial.report` in a multi-objective study, so its pruners cannot see the curve. The
second objectives the service offers (params, train_seconds) say nothing while a trial trains, but
the first (the validation metric) does: this callback records its curve on the trial (attribute
`objective_curve`, one value per epoch; a resumed attempt continues its lineage's) and prunes a
trial whose best value so far, at an epoch past `n_warmup_steps`, is worse than the median of the
best values so far that the finished trials (complete or pruned) had at the same epoch, once
`n_startup_trials` trials have completed; a non-finite value is pruned at once. It is a median rule
of our own on best-so-far values, not Optuna's MedianPruner (which compares the values at the step,
and reads `interval_steps` and `n_min_trials`, which this rule does not). Ours rather than
OptunaHub's multi-objective pruners: those are fetched from GitHub at run time, which workers here
cannot do.
"""

from __future__ import annotations

import math
import statistics

import keras
import optuna
from optuna.trial import TrialState

from storage import attrs

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def best_so_far(curve: list[float], epoch: int, minimize: bool) -> float:
    return (min if minimize else max)(curve[: epoch + 1])


class FirstObjectivePruning(keras.callbacks.Callback):
    def __init__(self, trial: optuna.Trial, metric: str, *, minimize: bool, n_startup_trials: int,
                 n_warmup_steps: int) -> None:
        super().__init__()
        self.trial, self.metric, self.minimize = trial, metric, minimize
        self.n_startup_trials, self.n_warmup_steps = n_startup_trials, n_warmup_steps
        self.curve: list[float] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        # A retry inherits its lineage's curve; the epochs it resumes past keep their values.
        self.curve = list(self.trial.user_attrs.get(attrs.OBJECTIVE_CURVE, ()))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = float((logs or {})[self.metric])
        self.curve = [*self.curve[:epoch], value]
        self.trial.set_user_attr(attrs.OBJECTIVE_CURVE, self.curve)
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"{self.metric} is {value} at epoch {epoch + 1}")
        if epoch < self.n_warmup_steps:
            return
        finished = self.trial.study.get_trials(deepcopy=False, states=FINISHED)
        if sum(t.state == TrialState.COMPLETE for t in finished) < max(self.n_startup_trials, 1):
            return
        others = [t.user_attrs[attrs.OBJECTIVE_CURVE] for t in finished
                  if len(t.user_attrs.get(attrs.OBJECTIVE_CURVE, ())) > epoch]
        if not others:
            return
        median = statistics.median(best_so_far(c, epoch, self.minimize) for c in others)
        mine = best_so_far(self.curve, epoch, self.minimize)
        if (mine > median) if self.minimize else (mine < median):
            raise optuna.TrialPruned(f"{self.metric} {mine:.4f} at epoch {epoch + 1} is worse than the median "
                                     f"{median:.4f} of {len(others)} finished trials")
