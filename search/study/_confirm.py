"""The confirmation stage of a study: its top trials retrained over seeds on the study's training
data, as trials that the study's workers run (`make evaluate` with evaluate.top_k > 1).

The trials live in a study of their own in the same store, NAME.confirm, made once per search study
(its uid recorded: a search study deleted and made again gets a new stage): so the search's sampler
history, pruner, budget and best trial never see them (an Optuna study has one of each), while they
are pulled, heartbeated, checkpointed and retried by the same worker loop as any trial. Each
carries `stage: confirm`, the search trial it `confirms` and its `confirm_seed`; a retry inherits
them. The pairs the last evaluate asked for are the stage's `confirm_wanted`: a worker skips a
queued one that is not among them (an evaluate interrupted, then run with a smaller top_k).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.spec import StudySpec
from search.study._ranking import params_key
from search.study._retries import retried
from search.study._store import storage_of
from search.study._study import resume
from storage import attrs

logger = logging.getLogger(__name__)
SUFFIX = ".confirm"


def confirm_name(name: str) -> str:
    return f"{name}{SUFFIX}"


def confirmation_study(study: optuna.Study, spec: StudySpec) -> optuna.Study:
    """NAME.confirm beside `study` in its store, made on first use with the search study's spec hash
    (workers check it, as for the search) and a uid of its own (its checkpoints apart); one left by
    an earlier study of the same name (another uid) is deleted first. A stage stopped by a failure
    streak is resumed: a person asked again."""
    storage, name = storage_of(study), confirm_name(study.study_name)
    confirm = optuna.create_study(study_name=name, storage=storage, directions=spec.directions, load_if_exists=True)
    made_for = confirm.user_attrs.get(attrs.CONFIRMS_STUDY)
    if made_for is not None and made_for != _identity(study):
        logger.warning("study %s holds the confirmations of an earlier study %s (deleted since): starting it anew",
                       name, made_for)
        optuna.delete_study(study_name=name, storage=storage)
        confirm = optuna.create_study(study_name=name, storage=storage, directions=spec.directions)
    if attrs.STUDY_SPACE_HASH not in confirm.user_attrs:
        confirm.set_user_attr(attrs.STUDY_UID, uuid.uuid4().hex[:12])
        confirm.set_user_attr(attrs.CONFIRMS_STUDY, _identity(study))
        confirm.set_user_attr(attrs.STUDY_SPEC, spec.hashed_fields())
        confirm.set_user_attr(attrs.STUDY_DESCRIPTION, f"the confirmation of study {study.study_name}'s top trials")
        if attrs.STUDY_DATASET in study.user_attrs:  # its workers check their data against it, as the search's
            confirm.set_user_attr(attrs.STUDY_DATASET, study.user_attrs[attrs.STUDY_DATASET])
        confirm.set_user_attr(attrs.STUDY_SPACE_HASH, spec.space_hash())  # last: the mark that it is made
    resume(confirm)
    return confirm


def stage_spec(spec: StudySpec, confirm: optuna.Study) -> StudySpec:
    """The study file as the confirmation stage's runner and workers read it: its budget is the
    trials the last evaluate queued (enqueue_confirmations), with no time limit."""
    return dataclasses.replace(spec, trials=int(confirm.user_attrs.get(attrs.STUDY_BUDGET, 0)), timeout_s=None)


def _identity(study: optuna.Study) -> str:
    return f"{study.study_name} (uid {study.user_attrs.get(attrs.STUDY_UID)})"


def enqueue_confirmations(confirm: optuna.Study, pool: Sequence[FrozenTrial], seeds: Sequence[int]) -> int:
    """Queue one trial per candidate and seed unless one is queued, running or done (a second
    evaluate, or one interrupted, reuses what ran; a lineage that failed for good is queued again);
    record the pairs wanted now; the stage's budget becomes every lineage, which it returns."""
    trials = confirm.get_trials(deepcopy=False)
    done = retried(trials)
    live = {_pair(t) for t in trials if t.state != TrialState.FAIL or t.number in done}
    for trial in pool:
        for seed in seeds:
            if (trial.number, seed) not in live:
                confirm.enqueue_trial(trial.params, user_attrs={attrs.STAGE: "confirm", attrs.CONFIRMS: trial.number,
                                                                attrs.CONFIRM_SEED: seed})
    confirm.set_user_attr(attrs.CONFIRM_WANTED, [[t.number, s] for t in pool for s in seeds])
    trials = confirm.get_trials(deepcopy=False)
    done = retried(trials)
    budget = sum(t.number not in done for t in trials)  # a lineage counts once, as search.study.budget_used
    confirm.set_user_attr(attrs.STUDY_BUDGET, budget)
    return budget


def wanted(confirm: optuna.Study, trial: FrozenTrial | optuna.Trial) -> bool:
    """Whether the last evaluate asked for this confirmation (its candidate and seed)."""
    pairs = confirm.user_attrs.get(attrs.CONFIRM_WANTED)
    return pairs is None or list(_pair(trial)) in pairs


def unfinished(confirm: optuna.Study) -> list[int]:
    """The wanted confirmations still queued or running: evaluate must not pick without them."""
    return [t.number for t in confirm.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
            if wanted(confirm, t)]


def confirmations_of(confirm: optuna.Study, trial: FrozenTrial, seeds: Sequence[int]) -> list[FrozenTrial] | None:
    """The completed confirmations of search trial `trial` (of its very parameters), one per seed in
    order; None when a seed has none (its lineage failed for good)."""
    key = params_key(trial.params)
    done = {t.user_attrs.get(attrs.CONFIRM_SEED): t
            for t in confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(attrs.CONFIRMS) == trial.number
            and params_key(t.params or t.system_attrs.get(attrs.FIXED_PARAMS)) == key}
    return [done[s] for s in seeds] if all(s in done for s in seeds) else None


def _pair(trial: FrozenTrial | optuna.Trial) -> tuple[int | None, int | None]:
    return trial.user_attrs.get(attrs.CONFIRMS), trial.user_attrs.get(attrs.CONFIRM_SEED)
