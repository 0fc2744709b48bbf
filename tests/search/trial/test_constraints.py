"""Hard limits of a study (`constraints:`): checked as early as each quantity is known, recorded through
Optuna's constraint API, and the best trial is the best feasible one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers.synthetic import ONE_TRIAL_STUDY, easy_splits, memory_study
from optuna.trial import TrialState

from search import StudySpecError, counts, parse_spec
from search.trial import Objective
from storage import attrs

TWO_EPOCHS = ONE_TRIAL_STUDY.replace("budget: {trials: 1, max_epochs: 1}", "budget: {trials: 1, max_epochs: 3}")
PARAMS = 1_000_000  # s000_model_1 on 32x32x3 has a few hundred thousand: under this, over a tenth of it


def _run(constraints: str):
    spec, study = memory_study(TWO_EPOCHS + f"constraints: {constraints}\n", name="limited")
    study.optimize(Objective(spec, easy_splits(200, 100)), n_trials=1)
    return spec, study, study.trials[0]


def test_a_model_over_max_params_is_built_but_not_trained():
    _, study, trial = _run("{max_params: 1000}")
    assert trial.state == TrialState.PRUNED and trial.intermediate_values == {}  # no epoch ran
    assert trial.constraints["params"] > 0
    assert "over max_params 1,000: not trained" in trial.user_attrs[attrs.INFEASIBLE]
    assert attrs.EPOCHS_RUN not in trial.user_attrs
    _, _, within = _run(f"{{max_params: {PARAMS}}}")
    assert within.state == TrialState.COMPLETE and within.constraints["params"] <= 0


def test_the_first_epoch_over_max_epoch_seconds_ends_training_and_the_trial_is_not_the_best():
    _, study, trial = _run("{max_epoch_seconds: 0.001}")
    # The first epoch (which also compiles the steps) is not judged; the second is over the limit: 2 of 3.
    assert trial.state == TrialState.COMPLETE and trial.user_attrs[attrs.EPOCHS_RUN] == 2
    assert trial.constraints["epoch_seconds"] > 0
    assert counts(study).best_value is None  # no feasible trial: no best, here or in Optuna
    with pytest.raises(ValueError):
        _ = study.best_trial
    _, study, fine = _run("{max_epoch_seconds: 3600}")
    assert fine.constraints["epoch_seconds"] < 0 and counts(study).best_trial == fine.number


def test_the_memory_a_trial_holds_above_its_start_is_recorded_against_its_limit(monkeypatch):
    """A fake probe whose reading grows 100 MiB each time it is read: the trial holds 100 MiB more at its
    first epoch's end than as it began, 300 at its third (the process's level before it does not count)."""
    from search.trial import _constraints

    readings = iter(range(5_000, 10_000, 100))
    monkeypatch.setattr(_constraints, "memory_in_use_mib", lambda: float(next(readings)))
    _, _, over = _run("{max_peak_memory_mb: 250}")
    assert over.state == TrialState.COMPLETE and over.constraints["peak_memory_mb"] == 300 - 250
    readings = iter(range(5_000, 10_000, 100))
    _, _, under = _run("{max_peak_memory_mb: 1000}")
    assert under.constraints["peak_memory_mb"] == 300 - 1000


def test_an_infeasible_trial_is_never_the_best_in_status_optuna_or_the_report():
    """A complete infeasible trial with the highest value, beside a feasible one with a lower value."""
    import optuna

    from dashboards._records import best_vs_epochs, top_trials

    study = optuna.create_study(direction="maximize")
    for value, over in ((0.9, 5.0), (0.5, -1.0)):
        trial = study.ask()
        trial.set_constraint("params", over)
        study.tell(trial, value)
    assert counts(study).best_value == 0.5 and study.best_trial.number == 1
    assert [row["trial"] for row in top_trials(study)] == [1]
    assert best_vs_epochs(study)[1] == [0.5]


def test_constraints_are_validated_and_hashed_only_when_set():
    with pytest.raises(StudySpecError, match=r"constraints: unknown field.*max_flops"):
        parse_spec(ONE_TRIAL_STUDY + "constraints: {max_flops: 10}\n", name="bad")
    with pytest.raises(StudySpecError, match=r"constraints.max_params"):
        parse_spec(ONE_TRIAL_STUDY + "constraints: {max_params: -5}\n", name="bad")
    plain = parse_spec(ONE_TRIAL_STUDY, name="a")
    assert plain.space_hash() == parse_spec(ONE_TRIAL_STUDY + "constraints: {}\n", name="a").space_hash()
    assert plain.space_hash() != parse_spec(ONE_TRIAL_STUDY + "constraints: {max_params: 5}\n", name="a").space_hash()


def test_with_folds_each_fits_tracing_epoch_is_not_judged_but_the_pace_of_every_fold_is(monkeypatch):
    """data.folds trains one model per fold with the same watch: a later fold's first epoch traces its
    functions again (slow), and must not end that fold; its later epochs count like the first fold's."""
    from search.trial import _constraints

    clock = iter([0.0, 9.0, 10.0, 11.0, 20.0, 29.0, 30.0, 32.0])  # begin/end: 9 s (tracing), 1 s; 9 s (tracing), 2 s
    monkeypatch.setattr(_constraints.time, "perf_counter", lambda: next(clock))
    watch = _constraints.ConstraintWatch({"max_epoch_seconds": 5.0})
    watch.set_model(SimpleNamespace(stop_training=False))
    for _ in range(2):  # two folds of two epochs
        watch.on_train_begin()
        for epoch in range(2):
            watch.on_epoch_begin(epoch)
            watch.on_epoch_end(epoch)
        assert watch.model.stop_training is False
    assert watch.observed["epoch_seconds"] == 2.0 and watch.violations() == {"epoch_seconds": -3.0}


def test_with_fidelity_by_data_an_epoch_on_a_share_is_judged_at_the_pace_of_one_on_all_the_data(monkeypatch):
    """Epochs on 1/9 and 1/3 of the images train 1 s each: 9 s and 3 s on all of them; their validation
    (0.5 s, on the whole validation split) is counted once, not scaled."""
    from search.trial import _constraints

    # begin, validation begin, validation end, end: tracing 5 s, then 1 s + 0.5 s, 1 s + 0.5 s, 4 s + 0.5 s
    clock = iter([0.0, 4.5, 5.0, 5.0, 10.0, 11.0, 11.5, 11.5, 20.0, 21.0, 21.5, 21.5, 30.0, 34.0, 34.5, 34.5])
    monkeypatch.setattr(_constraints.time, "perf_counter", lambda: next(clock))
    watch = _constraints.ConstraintWatch({"max_epoch_seconds": 8.0}, shares=(1 / 9, 1 / 9, 1 / 3, 1.0))
    watch.set_model(SimpleNamespace(stop_training=False))
    watch.on_train_begin()
    for epoch in range(4):
        watch.on_epoch_begin(epoch)
        watch.on_test_begin()
        watch.on_test_end()
        watch.on_epoch_end(epoch)
        if epoch == 1:  # 1 s on a ninth: over 8 s on all of it
            assert watch.model.stop_training is True
    assert watch.observed["epoch_seconds"] == pytest.approx(9.5)
