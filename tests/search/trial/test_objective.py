"""The objective on tiny trials: warm starts and pruning, and each way a trial fails (nan, oom, build)
recorded on the trial while the worker goes on."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest
from helpers.synthetic import TINY, easy_splits, memory_study
from optuna.trial import TrialState

from data import fold_splits
from search import (
    TrialFailure,
)
from search.trial._objective import Objective


def test_warm_starts_run_first_and_the_pruner_prunes():
    text = TINY + """warm_start:
  - {optimizer: adam, learning_rate: 0.003}
  - {optimizer: sgd, learning_rate: 1.0e-7, momentum: 0.9}
"""
    spec, study = memory_study(text)
    study.optimize(Objective(spec, easy_splits()), n_trials=2, catch=(TrialFailure,))
    first, second = study.trials
    assert first.params == {"optimizer": "adam", "learning_rate": 0.003, "batch_size": 32}
    assert second.params["learning_rate"] == 1e-7
    assert first.state == TrialState.COMPLETE and first.value > 0.5
    assert second.state == TrialState.PRUNED  # at chance after epoch 1, below the first trial's median
    assert len(second.intermediate_values) < 3
    for key in ("epochs_run", "best_epoch", "n_params", "train_seconds", "images_per_s", "device", "backend",
                "dataset_fingerprint", "space_hash", "code_version"):
        assert key in first.user_attrs, key
    assert first.user_attrs["n_params"] == 42_442
    assert first.user_attrs["backend"] == keras.backend.backend()

def test_nan_loss_fails_the_trial_and_the_worker_goes_on(monkeypatch):
    text = TINY.replace("n_startup_trials: 1", "n_startup_trials: 5") + """warm_start:
  - {optimizer: adam, learning_rate: 0.003}
  - {optimizer: sgd, learning_rate: 10000.0, momentum: 0.99}
  - {optimizer: adam, learning_rate: 0.001}
"""
    spec, study = memory_study(text)
    # SGD at lr 1e4 diverged to a NaN loss on one CPU but not on another: where ReLU is computed
    # with AVX-512's max, relu(NaN) is 0, so NaN weights or inputs can vanish before the loss (seen
    # on this repository's CI machine). A NaN sample weight makes the second trial's loss NaN on any
    # CPU, through the same TerminateOnNaN path.
    real_fit, calls = keras.Model.fit, {"n": 0}

    def fit_with_a_nan_loss_in_trial_two(self, x, y, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            kwargs["sample_weight"] = np.full(len(y), np.nan, dtype="float32")
        return real_fit(self, x, y, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit_with_a_nan_loss_in_trial_two)
    study.optimize(Objective(spec, easy_splits()), n_trials=3, catch=(TrialFailure,))
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].user_attrs["fail_reason"] == "nan"
    assert study.best_trial.number in (0, 2)
    assert all(t.value is None or 0 <= t.value <= 1 for t in study.trials)

def test_out_of_memory_fails_with_reason_oom_and_the_next_trial_finishes(monkeypatch):
    text = TINY.replace("n_startup_trials: 1", "n_startup_trials: 5") + """warm_start:
  - {optimizer: adam, learning_rate: 0.003}
  - {optimizer: adam, learning_rate: 0.002}
"""
    spec, study = memory_study(text)
    real_fit = keras.Model.fit
    calls = {"n": 0}

    def fit_once_oom(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("Unable to allocate 80.0 GiB for an array")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit_once_oom)
    study.optimize(Objective(spec, easy_splits()), n_trials=2, catch=(TrialFailure,))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["fail_reason"] == "oom"
    assert "80.0 GiB" in study.trials[0].user_attrs["fail_message"]

def test_unbuildable_config_fails_the_trial_not_the_worker():
    text = """
architecture: s000_model_2_3
dataset: cifar10
space:
  depth: {choices: [9]}
sampler: random
pruner: none
budget: {trials: 1, max_epochs: 1}
"""
    spec, study = memory_study(text)
    study.optimize(Objective(spec, easy_splits(100, 20)), n_trials=1, catch=(TrialFailure,))
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs["fail_reason"] == "build"


def test_folds_score_a_survivor_by_its_mean_and_a_pruned_trial_trains_one_fold(monkeypatch):
    text = TINY + """data: {folds: 3}
warm_start:
  - {optimizer: adam, learning_rate: 0.003}
  - {optimizer: sgd, learning_rate: 1.0e-7, momentum: 0.9}
"""
    spec, study = memory_study(text)
    easy = easy_splits(n_train=600, n_val=0)
    folds = fold_splits(SimpleNamespace(x_train=easy.x_train, y_train=easy.y_train, class_names=easy.class_names,
                                        fingerprint="synthetic", name="easy"), folds=spec.folds, seed=spec.seed)
    real_fit, fitted = keras.Model.fit, []

    def counted_fit(self, x, y, *args, **kwargs):
        fitted.append(len(y))
        return real_fit(self, x, y, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", counted_fit)
    study.optimize(Objective(spec, folds[0], other_folds=folds[1:]), n_trials=2, catch=(TrialFailure,))
    survivor, pruned = study.trials
    assert survivor.state == TrialState.COMPLETE and pruned.state == TrialState.PRUNED
    values = survivor.user_attrs["fold_values"]
    assert len(values) == 3 and len(survivor.user_attrs["fold_best_epochs"]) == 3
    assert survivor.value == pytest.approx(sum(values) / 3)
    assert "fold_values" not in pruned.user_attrs
    assert fitted == [400, 400, 400, 400]  # three folds for the survivor, the first only for the pruned trial
