"""The confirmation stage of a study: its top trials retrained over seeds on all the training data,
as trials that the study's workers run (`make evaluate` with evaluate.top_k > 1).

The trials live in a study of their own in the same store, NAME.confirm, made once from the
search study: so the search's sampler history, pruner, budget and best trial never see them (an
Optuna study has one of each), while they are pulled, heartbeated, checkpointed and retried by the
same worker loop as any trial. Each carries `stage: confirm`, the search trial it `confirms` and
its `confirm_seed`; a retry inherits them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.spec import StudySpec
from search.study._store import storage_of
from storage import attrs

SUFFIX = ".confirm"


def confirm_name(name: str) -> str:
    return f"{name}{SUFFIX}"


def confirmation_study(study: optuna.Study, spec: StudySpec, **kwargs: object) -> optuna.Study:
    """NAME.confirm beside `study` in its store, made on first use with the search study's spec hash
    (workers check it, as for the search) and a uid of its own (its checkpoints apart)."""
    confirm = optuna.create_study(study_name=confirm_name(study.study_name), storage=storage_of(study),
                                  directions=spec.directions, load_if_exists=True, **kwargs)
    if attrs.STUDY_SPACE_HASH not in confirm.user_attrs:
        confirm.set_user_attr(attrs.STUDY_UID, uuid.uuid4().hex[:12])
        confirm.set_user_attr(attrs.CONFIRMS_STUDY, study.study_name)
        confirm.set_user_attr(attrs.STUDY_SPEC, spec.hashed_fields())
        confirm.set_user_attr(attrs.STUDY_DESCRIPTION, f"the confirmation of study {study.study_name}'s top trials")
        if attrs.STUDY_DATASET in study.user_attrs:  # its workers check their data against it, as the search's
            confirm.set_user_attr(attrs.STUDY_DATASET, study.user_attrs[attrs.STUDY_DATASET])
        confirm.set_user_attr(attrs.STUDY_SPACE_HASH, spec.space_hash())  # last: the mark that it is made
    return confirm


def enqueue_confirmations(confirm: optuna.Study, pool: Sequence[FrozenTrial], seeds: Sequence[int]) -> int:
    """Queue one trial per candidate and seed that is not queued or done yet (a second evaluate, or
    one interrupted, reuses what ran); the stage's budget becomes all of them, which it returns."""
    queued = {(t.user_attrs.get(attrs.CONFIRMS), t.user_attrs.get(attrs.CONFIRM_SEED))
              for t in confirm.get_trials(deepcopy=False)}
    for trial in pool:
        for seed in seeds:
            if (trial.number, seed) not in queued:
                confirm.enqueue_trial(trial.params, user_attrs={attrs.STAGE: "confirm", attrs.CONFIRMS: trial.number,
                                                                attrs.CONFIRM_SEED: seed})
                queued.add((trial.number, seed))
    confirm.set_user_attr(attrs.STUDY_BUDGET, len(queued))
    return len(queued)


def confirmations_of(confirm: optuna.Study, trial: int, seeds: Sequence[int]) -> list[FrozenTrial] | None:
    """The completed confirmations of search trial `trial`, one per seed in order; None when a seed
    has none (its lineage failed for good)."""
    done = {t.user_attrs.get(attrs.CONFIRM_SEED): t
            for t in confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(attrs.CONFIRMS) == trial}
    return [done[s] for s in seeds] if all(s in done for s in seeds) else None
