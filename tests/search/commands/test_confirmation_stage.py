"""The confirmation stage (search.study._confirm) as `make evaluate` drives it: candidates queued as
trials of NAME.confirm, run by whoever pulls them, read back, the pick by confirmed mean. Here the
"workers" are a function that tells each queued trial a value, so no model trains."""

from __future__ import annotations

import optuna
import pytest
from helpers.synthetic import TINY

from search import create_study, parse_spec
from search.commands._evaluate import _best, _confirm_on_workers, candidates
from search.study import confirm_name, confirmation_study, enqueue_confirmations
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


def test_a_second_evaluate_reuses_what_ran_and_a_candidate_that_failed_for_good_is_left_out():
    spec, study = _searched()
    pool = candidates(study, 3)
    confirm = confirmation_study(study, spec)
    levels = {1: 0.55, 3: 0.68, 2: 0.60}
    confirmed = _confirm_on_workers(study, spec, pool, (0, 1, 2), _workers(confirm, levels, fail={(3, 1)}))
    assert [c.trial.number for c in confirmed] == [1, 2]  # trial 3's seed 1 failed: it is not compared on 2 seeds
    assert enqueue_confirmations(confirmation_study(study, spec), pool, (0, 1, 2)) == 9  # nothing queued twice
    assert len(confirm.trials) == 9
    with pytest.raises(RuntimeError, match="no candidate of study tiny was confirmed"):
        _confirm_on_workers(study, spec, candidates(study, 1), (5, 6, 7),
                            _workers(confirm, levels, fail={(1, 5), (1, 6), (1, 7)}))
