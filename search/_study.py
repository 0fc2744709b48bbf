"""Creating a study (once, idempotent), checking a worker may join it, and counting its budget."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import optuna
from optuna.trial import TrialState

from search._spec import StudySpec
from search.errors import StudyMismatchError

logger = logging.getLogger(__name__)

# A trial counts against the budget once it has started: finished, pruned, failed or running;
# except a failed trial that was retried, whose retry counts in its place.
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def create_study(spec: StudySpec, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study if it does not exist, record its spec, enqueue warm starts (once)."""
    study = optuna.create_study(study_name=spec.name, storage=storage, directions=spec.directions,
                                load_if_exists=True)
    if "space_hash" not in study.user_attrs:
        # A unique id per study instance: a study deleted and made again under the same name must
        # never pick up the old one's checkpoints.
        study.set_user_attr("uid", uuid.uuid4().hex[:12])
        study.set_user_attr("space_hash", spec.space_hash())
        study.set_user_attr("spec", spec.hashed_fields())
        study.set_user_attr("description", spec.description)
        for params in spec.warm_start:
            study.enqueue_trial(params, user_attrs={"warm_start": True}, skip_if_exists=True)
        logger.info("created study %s (%d warm-start trials enqueued)", spec.name, len(spec.warm_start))
    else:
        check_compatible(study, spec)
    study.set_user_attr("budget", spec.trials)
    return study


def check_compatible(study: optuna.Study, spec: StudySpec) -> None:
    """Refuse a spec whose comparable fields differ from those the study was created with."""
    theirs = study.user_attrs.get("spec") or {}
    if study.user_attrs.get("space_hash") == spec.space_hash():
        return
    mine = spec.hashed_fields()
    diffs = [f"{k}: study has {json.dumps(theirs.get(k))}, this file has {json.dumps(v)}"
             for k, v in mine.items() if theirs.get(k) != v]
    raise StudyMismatchError(
        f"study {spec.name!r} was created with a different search space or setup; refusing to join. "
        + "; ".join(diffs or ["(hash differs)"])
        + ". Use a new study name for a new space, or restore the study file."
    )


def load_existing(name: str, storage: optuna.storages.BaseStorage, **kwargs: Any) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError:
        raise StudyMismatchError(
            f"study {name!r} does not exist in this store; create it first with `make study NAME={name}` "
            f"(workers never create studies)"
        ) from None


def counts(study: optuna.Study) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    by_state = {s: sum(t.state == s for t in trials) for s in TrialState}
    best = None
    if len(study.directions) == 1:
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        best = max(done, key=lambda t: t.value) if done else None
    return {
        "study": study.study_name,
        "n_complete": by_state[TrialState.COMPLETE],
        "n_pruned": by_state[TrialState.PRUNED],
        "n_fail": by_state[TrialState.FAIL],
        "n_running": by_state[TrialState.RUNNING],
        "n_waiting": by_state[TrialState.WAITING],
        "budget": study.user_attrs.get("budget"),
        "best_value": best.value if best else None,
        "best_params": best.params if best else None,
        "best_trial": best.number if best else None,
    }


def budget_used(study: optuna.Study) -> int:
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return sum(t.state in BUDGET_STATES and not (t.state == TrialState.FAIL and t.number in retried) for t in trials)
