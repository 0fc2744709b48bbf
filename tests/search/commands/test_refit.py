"""`python -m search refit` (SearchCV's best_estimator_): the best configuration trained once on all
the training data, for the epochs its search found best, and saved; the test split is not read."""

from __future__ import annotations

import keras
import optuna
import pytest
from helpers.datasets import write_cifar10_pickles
from helpers.synthetic import FEATURE_STUDY, TINY

from data import Dataset
from search import StudySpecError, TrialFailure, create_study, make_pruner, make_sampler, parse_spec
from search.commands._refit import refit, refit_epochs
from search.settings import Settings
from search.spec import load_data, study_folds
from search.trial import load_model
from search.trial._objective import Objective


def test_refit_trains_the_best_configuration_on_every_training_image(tmp_path, monkeypatch):
    write_cifar10_pickles(tmp_path / "data", n_per_batch=60)  # 300 training images
    settings = Settings.from_env({"DATA_DIR": str(tmp_path / "data"), "DATA_CACHE": str(tmp_path / "cache")})
    spec = parse_spec(TINY + "data: {folds: 2}\nwarm_start:\n  - {optimizer: adam, learning_rate: 0.003}\n",
                      name="tiny")
    study = create_study(spec, optuna.storages.InMemoryStorage())
    study.sampler, study.pruner = make_sampler(spec), make_pruner(spec)
    first, *others = study_folds(spec, load_data(spec, settings))
    study.optimize(Objective(spec, first, other_folds=others), n_trials=2, catch=(TrialFailure,))
    best = study.best_trial
    monkeypatch.setattr(Dataset, "test_split", lambda self: pytest.fail("refit read the test split"))
    fitted = []
    monkeypatch.setattr("keras.Model.fit", _spy(fitted))

    record = refit(spec, study, settings, tmp_path / "out" / "model.keras")
    assert record["trial"] == best.number and record["n_train"] == 300 and fitted == [(300, record["epochs"])]
    assert record["epochs"] == refit_epochs(best, spec) == max(1, round(sum(best.user_attrs["fold_best_epochs"]) / 2))
    model = load_model(tmp_path / "out" / "model.keras")
    assert model.count_params() == best.user_attrs["n_params"] and model.output_shape == (None, 10)


def test_refit_epochs_follow_the_best_epoch_or_the_folds_mean():
    trial = optuna.trial.create_trial(value=0.5, user_attrs={"best_epoch": 4})
    spec = parse_spec(TINY, name="tiny")
    assert refit_epochs(trial, spec) == 4
    folded = optuna.trial.create_trial(value=0.5, user_attrs={"best_epoch": 4, "fold_best_epochs": [2, 3, 3]})
    assert refit_epochs(folded, spec) == 3


def test_a_feature_cache_study_is_refused_pointing_to_evaluate(tmp_path):
    spec = parse_spec(FEATURE_STUDY, name="feat")
    with pytest.raises(StudySpecError, match="feature_cache: .*`make evaluate` trains and stores it"):
        refit(spec, optuna.create_study(), Settings.from_env({}), tmp_path / "m.keras")


def _spy(fitted):
    real = keras.Model.fit

    def fit(self, x, y=None, *args, epochs=1, **kwargs):
        fitted.append((len(x), epochs))
        return real(self, x, y, *args, epochs=epochs, **kwargs)

    return fit
