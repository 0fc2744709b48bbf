"""The fine-tuning stage in the store (search.study._fine_tune): which heads are promoted, once; the
head budget; the stage's own pruning. Optuna only, in memory: no Keras."""

from __future__ import annotations

import contextlib

import optuna
import pytest
from helpers.processes import REPO
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search import parse_spec
from search.study import (
    FineTuneStage,
    best_heads,
    budget_used,
    counts,
    placeholder,
    promote,
    prune_in_stage,
    stage_lines,
    stage_pending,
    stage_summary,
)
from search.study._store import fresh_trial
from storage import attrs

SPEC = parse_spec((REPO / "search/studies/fc_head.yaml").read_text() + "fine_tune: {top_k: 2, epochs: 3}\n",
                  name="fc_head")
LR = FloatDistribution(1e-4, 1e-1, log=True)


def _head(study: optuna.Study, value: float, lr: float, **kw) -> None:
    study.add_trial(create_trial(params={"learning_rate": lr}, distributions={"learning_rate": LR}, value=value, **kw))


def _study(*values_and_rates: tuple[float, float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(attrs.STUDY_BUDGET, 4)
    for value, lr in values_and_rates:
        _head(study, value, lr)
    return study


def test_the_best_distinct_feasible_heads_are_promoted_once_with_their_params():
    study = _study((0.5, 1e-3), (0.7, 2e-3), (0.7, 2e-3), (0.6, 3e-3))  # trial 2 repeats trial 1's params
    study.add_trial(create_trial(params={"learning_rate": 4e-3}, distributions={"learning_rate": LR}, value=0.9,
                                 system_attrs={"constraints": [1.0]}))  # the best value, but infeasible
    assert [t.number for t in best_heads(study, 2)] == [1, 3]
    assert promote(study, SPEC) == [1, 3]
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.user_attrs[attrs.STAGE], t.user_attrs[attrs.PROMOTED_FROM], t.system_attrs[attrs.FIXED_PARAMS])
            for t in queued] == [("fine_tune", 1, {"learning_rate": 2e-3}), ("fine_tune", 3, {"learning_rate": 3e-3})]
    assert study.user_attrs[attrs.FINE_TUNE_PROMOTED] == [1, 3]
    assert promote(study, SPEC) == [] and len(study.get_trials(states=(TrialState.WAITING,))) == 2  # once
    assert counts(study).budget == 4 + 2  # what `make status` and the progress bar count to


def test_a_promotion_cut_short_is_completed_without_queuing_a_head_twice():
    study = _study((0.5, 1e-3), (0.7, 2e-3), (0.6, 3e-3))
    study.enqueue_trial({"learning_rate": 2e-3}, user_attrs={attrs.STAGE: "fine_tune", attrs.PROMOTED_FROM: 1})
    assert promote(study, SPEC) == [2]  # the process that queued trial 1's died before recording it
    assert sorted(t.user_attrs[attrs.PROMOTED_FROM] for t in study.get_trials(states=(TrialState.WAITING,))) == [1, 2]


def test_fine_tuning_trials_do_not_count_against_the_head_budget():
    study = _study((0.5, 1e-3), (0.7, 2e-3))
    promote(study, SPEC)
    assert budget_used(study) == 2
    trial = study.ask()  # a promoted one
    assert trial.user_attrs[attrs.STAGE] == "fine_tune"
    study.tell(trial, 0.8)
    assert budget_used(study) == 2


def test_the_stage_promotes_under_its_lock_and_only_once():
    study = _study((0.5, 1e-3), (0.7, 2e-3))
    held = []

    @contextlib.contextmanager
    def lock():
        held.append("lock")
        yield

    stage = FineTuneStage(SPEC, lock)
    assert not stage.queued(study)
    assert stage.promote(study) is True and held == ["lock"] and stage.queued(study)
    assert stage.promote(study) is False and held == ["lock"]  # promoted already: the lock is not even taken


def _tuned(study: optuna.Study, curve: list[float], state=TrialState.COMPLETE) -> None:
    study.add_trial(create_trial(
        params={"learning_rate": 1e-3, "fine_tune_unfreeze_blocks": 1},
        distributions={"learning_rate": LR, "fine_tune_unfreeze_blocks": IntDistribution(1, 2)},
        value=max(curve) if state == TrialState.COMPLETE else None, state=state,
        intermediate_values=dict(enumerate(curve)), user_attrs={attrs.STAGE: "fine_tune", attrs.PROMOTED_FROM: 0}))


@pytest.mark.parametrize("heads_at_step_1, reported, pruned", [(0.2, 0.75, True), (0.95, 0.9, False)])
def test_a_fine_tuning_trial_is_pruned_against_the_other_fine_tuning_trials_only(heads_at_step_1, reported, pruned):
    """The median of the fine-tuning trials (0.855 at the second epoch) decides, not that of every
    trial, which the five heads would hold at 0.2 (nothing pruned) or at 0.95 (everything pruned).
    The study's own pruner is left alone: Optuna's TPE reads it (Hyperband's brackets)."""
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.HyperbandPruner())
    for _ in range(5):
        study.add_trial(create_trial(params={"learning_rate": 1e-3}, distributions={"learning_rate": LR},
                                     value=heads_at_step_1, intermediate_values={0: 0.1, 1: heads_at_step_1}))
    _tuned(study, [0.80, 0.85])
    _tuned(study, [0.80, 0.86])
    study.enqueue_trial({"learning_rate": 1e-3}, user_attrs={attrs.STAGE: "fine_tune", attrs.PROMOTED_FROM: 0})
    trial = study.ask()
    trial.report(0.10, 0)
    assert not prune_in_stage(study, fresh_trial(trial))  # the first epoch is the stage's warm-up
    trial.report(reported, 1)
    assert bool(prune_in_stage(study, fresh_trial(trial))) is pruned


def test_a_worker_asking_too_late_leaves_a_placeholder_that_nothing_counts():
    study = _study((0.5, 1e-3), (0.7, 2e-3))
    promote(study, SPEC)
    assert stage_pending(study, SPEC)
    for _ in range(2):
        study.tell(study.ask(), 0.8)
    assert not stage_pending(study, SPEC)  # promoted, nothing queued or running
    late = study.ask()  # nothing queued: Optuna samples a new trial, which the loop marks and prunes
    late.set_user_attr(attrs.STAGE, "fine_tune")
    study.tell(late, state=TrialState.PRUNED)
    assert placeholder(study.trials[-1]) and not any(placeholder(t) for t in study.trials[:-1])
    c = counts(study)
    assert (c.n_complete, c.n_pruned, c.budget) == (4, 0, 4 + 2) and budget_used(study) == 2


def test_a_study_without_fine_tune_has_no_stage_pending():
    assert not stage_pending(_study((0.5, 1e-3)), parse_spec(
        (REPO / "search/studies/fc_head.yaml").read_text(), name="fc_head"))


def test_status_shows_each_promoted_head_and_its_fine_tuning():
    study = _study((0.5, 1e-3), (0.7, 2e-3))
    assert stage_summary(study) is None
    promote(study, SPEC)
    trial = study.ask()
    study.tell(trial, 0.81)
    summary = stage_summary(study)
    assert summary["promoted"] == [1, 0]
    assert summary["trials"] == [{"trial": 2, "promoted_from": 1, "state": "COMPLETE", "value": 0.81, "head_value": 0.7},
                                 {"trial": 3, "promoted_from": 0, "state": "WAITING", "value": None, "head_value": 0.5}]
    assert stage_lines(summary) == ["fine-tuning stage: heads 1, 0 promoted", "  trial 2 (head 1, 0.7000): complete 0.8100",
                                    "  trial 3 (head 0, 0.5000): waiting"]
