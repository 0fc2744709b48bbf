"""Pruning a two-objective study on its first objective's curve (search/trial/_pareto_pruning.py)."""

from __future__ import annotations

import statistics

from helpers.synthetic import easy_splits, memory_study
from optuna.trial import TrialState

from search.trial import Objective
from storage import attrs

TWO_OBJECTIVES = """
architecture: s000_model_1
dataset: cifar10
space:
  learning_rate: {choices: [0.003, 0.001, 1.0e-7]}
  batch_size: {choices: [32]}
sampler: {name: random, seed: 0}
pruner: {name: median, n_startup_trials: 2, n_warmup_steps: 0}
objective: {second: params}
budget: {trials: 3, max_epochs: 3}
warm_start:
  - {learning_rate: 0.003}
  - {learning_rate: 0.001}
  - {learning_rate: 1.0e-7}
"""


def test_a_trial_below_the_median_of_the_finished_curves_is_pruned():
    spec, study = memory_study(TWO_OBJECTIVES, name="pareto")
    assert spec.directions == ["maximize", "minimize"]
    study.optimize(Objective(spec, easy_splits(600, 200)), n_trials=3)
    good, also_good, stalled = study.trials
    assert (good.state, also_good.state) == (TrialState.COMPLETE, TrialState.COMPLETE)
    assert len(good.user_attrs[attrs.OBJECTIVE_CURVE]) == good.user_attrs[attrs.EPOCHS_RUN] == 3
    assert good.values[1] == good.user_attrs[attrs.N_PARAMS]  # the second objective
    assert stalled.state == TrialState.PRUNED
    assert len(stalled.user_attrs[attrs.OBJECTIVE_CURVE]) == 1  # pruned at its first epoch: 2 saved
    firsts = [t.user_attrs[attrs.OBJECTIVE_CURVE][0] for t in (good, also_good)]
    assert stalled.user_attrs[attrs.OBJECTIVE_CURVE][0] < statistics.median(firsts)  # the median rule


def test_a_resumed_attempt_continues_its_lineages_curve_and_a_non_finite_value_is_pruned():
    import optuna
    import pytest

    from search.trial._pareto_pruning import FirstObjectivePruning

    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    trial.set_user_attr(attrs.OBJECTIVE_CURVE, [0.5, 0.6, 0.2])  # inherited: the attempt before ran 3 epochs
    callback = FirstObjectivePruning(trial, "val_accuracy", minimize=False, n_startup_trials=5, n_warmup_steps=0)
    callback.on_train_begin()
    callback.on_epoch_end(2, {"val_accuracy": 0.7})  # resumed from epoch 2's checkpoint
    assert trial.user_attrs[attrs.OBJECTIVE_CURVE] == [0.5, 0.6, 0.7]
    with pytest.raises(optuna.TrialPruned, match="nan at epoch 4"):
        callback.on_epoch_end(3, {"val_accuracy": float("nan")})


def test_nothing_is_pruned_before_enough_trials_finished():
    spec, study = memory_study(TWO_OBJECTIVES.replace("n_startup_trials: 2", "n_startup_trials: 3"), name="pareto")
    study.optimize(Objective(spec, easy_splits(600, 200)), n_trials=3)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
