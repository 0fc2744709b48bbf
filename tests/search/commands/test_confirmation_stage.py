"""The confirmation stage (search.study._confirm) as `make evaluate` drives it: candidates queued as
trials of NAME.confirm, run by whoever pulls them, read back, the pick by confirmed mean. Here the
"workers" are a function that tells each queued trial a value, so no model trains."""

from __future__ import annotations

import optuna
import pytest
from helpers.synthetic import TINY

from search import create_study, parse_spec
from search.commands._evaluate import _best, _confirm_on_workers, candidates
from search.study import confirm_name, confirmation_study, enqueue_confirmations, unfinished, wanted
from storage import attrs

SCORES = {0: 0.50, 1: 0.70, 2: 0.60, 3: 0.65}  # the search's values: trial 1 best, then 3, then 2


def _searched():
    spec = parse_spec(TINY, name="tiny")
    study = create_study(spec, optuna.storages.InMemoryStorage())
    for number, value in SCORES.items():
        trial = study.ask()
        trial.suggest_categorical("optimizer", ["adam", "sgd"])
        trial.suggest_float("learning_rate", 1e-7, 1e4, log=True)
        trial.suggest_categorical("batch_size", [32])
        study.tell(trial, value)
    return spec, study


def _workers(confirm: optuna.Study, confirmed_means: dict[int, float], fail: set[tuple[int, int]] = frozenset()):
    """Pull every queued confirmation and tell it its candidate's confirmed level (+ a seed's wobble)."""
    def run() -> None:
        while confirm.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            trial = confirm.ask()
            key = (trial.user_attrs[attrs.CONFIRMS], trial.user_attrs[attrs.CONFIRM_SEED])
            trial.set_user_attr(attrs.VAL_ACCURACY_CURVE, [0.1, confirmed_means[key[0]]])
            if key in fail:
                confirm.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                confirm.tell(trial, confirmed_means[key[0]] + 0.001 * key[1])
    return run


def test_the_pick_is_the_best_confirmed_mean_and_the_search_never_sees_the_confirmations():
    spec, study = _searched()
    pool = candidates(study, 3)
    assert [t.number for t in pool] == [1, 3, 2]
    confirm = confirmation_study(study, spec)
    confirmed = _confirm_on_workers(study, spec, pool, (0, 1, 2), _workers(confirm, {1: 0.55, 3: 0.68, 2: 0.60}))
    assert [c.trial.number for c in confirmed] == [1, 3, 2]
    assert _best(confirmed, minimize=False).trial.number == 3  # a lower-ranked candidate confirmed higher
    assert confirmed[0].values == pytest.approx([0.55, 0.551, 0.552]) and confirmed[0].accuracies == [0.55] * 3
    assert confirmed[0].row(minimize=False)["over_rating"] == pytest.approx(0.70 - 0.551)
    assert len(study.trials) == 4 and study.best_trial.number == 1  # the search: its trials and best as they were
    assert len(confirm.trials) == 9 and confirm.study_name == confirm_name("tiny") == "tiny.confirm"
    assert confirm.user_attrs[attrs.STUDY_SPACE_HASH] == study.user_attrs[attrs.STUDY_SPACE_HASH]
    # Queued with the candidate's parameters, which a worker's suggest() then takes (search.spec.suggest).
    assert [t.system_attrs[attrs.FIXED_PARAMS] for t in confirm.trials if t.user_attrs[attrs.CONFIRMS] == 3] == [
        study.trials[3].params] * 3


def test_a_candidate_whose_confirmation_failed_for_good_is_left_out_and_a_second_evaluate_reuses_what_ran():
    spec, study = _searched()
    pool = candidates(study, 3)
    confirm = confirmation_study(study, spec)
    levels = {1: 0.55, 3: 0.68, 2: 0.60}
    confirmed = _confirm_on_workers(study, spec, pool, (0, 1, 2), _workers(confirm, levels, fail={(3, 1)}))
    assert [c.trial.number for c in confirmed] == [1, 2]  # trial 3's seed 1 failed: it is not compared on 2 seeds
    # Again: what ran is reused, and only the lineage that failed for good is queued once more.
    assert enqueue_confirmations(confirmation_study(study, spec), pool, (0, 1, 2)) == 10
    assert len(confirm.trials) == 10
    with pytest.raises(RuntimeError, match="no candidate of study tiny was confirmed"):
        _confirm_on_workers(study, spec, candidates(study, 1), (5, 6, 7),
                            _workers(confirm, levels, fail={(1, 5), (1, 6), (1, 7)}))


def test_stopped_workers_leave_the_comparison_incomplete_and_nothing_is_picked():
    """Workers stopped by a signal exit 0 with confirmations still queued: evaluate must not pick
    among the candidates that happened to finish (and then read the test split)."""
    spec, study = _searched()
    confirm = confirmation_study(study, spec)

    def stopped_after_four() -> None:
        for _ in range(4):
            trial = confirm.ask()
            confirm.tell(trial, 0.5)

    with pytest.raises(RuntimeError, match=r"stopped with 5 confirmation\(s\) queued or running .* nothing was tested"):
        _confirm_on_workers(study, spec, candidates(study, 3), (0, 1, 2), stopped_after_four)


def test_a_stopped_stage_is_resumed_and_a_lineage_that_failed_for_good_is_queued_again():
    spec, study = _searched()
    pool = candidates(study, 2)
    confirm = confirmation_study(study, spec)
    _confirm_on_workers(study, spec, pool, (0, 1, 2), _workers(confirm, {1: 0.55, 3: 0.68}, fail={(3, 1)}))
    confirm.set_user_attr(attrs.STUDY_STOPPED, "5 consecutive failures (oom)")
    again = confirmation_study(study, spec)
    assert again.user_attrs[attrs.STUDY_STOPPED] is None  # `make evaluate` again: the stage runs
    assert enqueue_confirmations(again, pool, (0, 1, 2)) == 7  # the failed (3, seed 1) once more, as a new lineage
    waiting = again.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [(t.user_attrs[attrs.CONFIRMS], t.user_attrs[attrs.CONFIRM_SEED]) for t in waiting] == [(3, 1)]


def test_only_the_confirmations_the_last_evaluate_asked_for_are_wanted():
    spec, study = _searched()
    confirm = confirmation_study(study, spec)
    enqueue_confirmations(confirm, candidates(study, 3), (0, 1, 2))  # an evaluate interrupted at once
    enqueue_confirmations(confirm, candidates(study, 1), (0, 1, 2))  # then run with top_k 1
    left = [t for t in confirm.trials if not wanted(confirm, t)]
    assert sorted({t.user_attrs[attrs.CONFIRMS] for t in left}) == [2, 3] and len(left) == 6
    assert len(unfinished(confirm)) == 3  # evaluate waits for trial 1's three seeds only


def test_the_stage_of_a_deleted_search_study_is_not_reused():
    spec, study = _searched()
    storage = study._storage
    confirm = confirmation_study(study, spec)
    enqueue_confirmations(confirm, candidates(study, 2), (0, 1, 2))
    optuna.delete_study(study_name="tiny", storage=storage)
    again = create_study(spec, storage)  # the same name, another study (another uid)
    assert confirmation_study(again, spec).trials == []


def test_a_confirmation_worker_trains_only_what_was_asked_for(monkeypatch):
    """A queued confirmation the last evaluate dropped, and a trial the stage's sampler made when two
    workers raced for the last queued one, are pruned before anything trains."""
    from helpers.synthetic import easy_splits

    from search.trial import Objective

    spec, study = _searched()
    confirm = confirmation_study(study, spec)
    enqueue_confirmations(confirm, candidates(study, 2), (0,))  # trial 1 and trial 3, seed 0
    enqueue_confirmations(confirm, candidates(study, 1), (0,))  # then only trial 1
    monkeypatch.setattr("keras.Model.fit", lambda *a, **k: pytest.fail("an unwanted trial trained"))
    objective = Objective(spec, easy_splits(60, 20), confirming=True)
    first = confirm.ask()
    assert first.user_attrs[attrs.CONFIRMS] == 1
    confirm.tell(first, 0.5)  # trial 1's, wanted: what the other tests train
    for why in ("a confirmation the last evaluate did not ask for",  # trial 3's, queued by the first evaluate
                "a trial of the confirmation stage that confirms nothing"):  # nothing queued: the sampler's own
        trial = confirm.ask()
        with pytest.raises(optuna.TrialPruned, match=why):
            objective(trial)
        assert trial.user_attrs[attrs.INFEASIBLE] == why
