"""Creating a study (once, idempotent), checking a worker may join it, and counting its budget."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from search.errors import OUTSIDE_CAUSES, StudyMismatchError
from search.spec import StudySpec
from search.study._fine_tune import head_trials, placeholder
from search.study._retries import retried
from search.study._store import ResilientStorage, resilient, storage_of
from storage import attrs, close_storage, open_storage

logger = logging.getLogger(__name__)

# A trial counts against the budget once it has started: finished, pruned, failed or running;
# except a failed trial that was retried, whose retry counts in its place.
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def create_study(spec: StudySpec, storage: optuna.storages.BaseStorage, *,
                 dataset_description: dict[str, Any] | None = None) -> optuna.Study:
    """Create the study if it does not exist, record its spec and its data's description (shape,
    classes, class names, source: data's Dataset.description), enqueue warm starts (once)."""
    study = optuna.create_study(study_name=spec.name, storage=storage, directions=spec.directions,
                                load_if_exists=True)
    if attrs.STUDY_SPACE_HASH not in study.user_attrs:
        # A unique id per study instance: a study deleted and made again under the same name must
        # never pick up the old one's checkpoints (kept if a create cut short set it already).
        if attrs.STUDY_UID not in study.user_attrs:
            study.set_user_attr(attrs.STUDY_UID, uuid.uuid4().hex[:12])
        study.set_user_attr(attrs.STUDY_SPEC, spec.hashed_fields())
        study.set_user_attr(attrs.STUDY_DESCRIPTION, spec.description)
        for params in spec.warm_start:  # skip_if_exists: a create cut short and run again queues each once
            study.enqueue_trial(params, user_attrs={attrs.WARM_START: True}, skip_if_exists=True)
        study.set_user_attr(attrs.STUDY_SPACE_HASH, spec.space_hash())  # last: the mark that the study is made
        logger.info("created study %s (%d warm-start trials enqueued)", spec.name, len(spec.warm_start))
    else:
        check_compatible(study, spec)
        resume(study)
    study.set_user_attr(attrs.STUDY_BUDGET, spec.trials)
    # Once: a later description replaces only one recorded without loading the data (no fingerprint).
    if dataset_description is not None and not (study.user_attrs.get(attrs.STUDY_DATASET) or {}).get("fingerprint"):
        study.set_user_attr(attrs.STUDY_DATASET, dataset_description)
    return study


def check_compatible(study: optuna.Study, spec: StudySpec) -> None:
    """Refuse a spec whose comparable fields differ from those the study was created with."""
    theirs = study.user_attrs.get(attrs.STUDY_SPEC) or {}
    if study.user_attrs.get(attrs.STUDY_SPACE_HASH) == spec.space_hash():
        return
    mine = spec.hashed_fields()
    diffs = [f"{k}: study has {json.dumps(theirs.get(k))}, this file has {json.dumps(v)}"
             for k, v in mine.items() if theirs.get(k) != v]
    raise StudyMismatchError(
        f"study {spec.name!r} was created with a different search space or setup; refusing to join. "
        + "; ".join(diffs or ["(hash differs)"])
        + ". Use a new study name for a new space, or restore the study file."
    )


def check_same_data(study: optuna.Study, spec: StudySpec, fingerprint: str) -> None:
    """Data of the user's own must be what the study was created on (its recorded fingerprint). A named
    dataset's copies may differ in encoding (DATA_DIR's JPEGs, Keras's download) and are not compared."""
    recorded = (study.user_attrs.get(attrs.STUDY_DATASET) or {}).get("fingerprint")
    if recorded and not spec.dataset_ref.named and recorded != fingerprint:
        raise StudyMismatchError(
            f"study {spec.name!r}: its data ({spec.dataset_ref}) changed since the study was created (fingerprint "
            f"{recorded}, now {fingerprint}); restore it, or run a new study under another name")


def load_existing(name: str, storage: optuna.storages.BaseStorage, **kwargs: Any) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError:
        if name.endswith(".confirm"):  # search.study._confirm.SUFFIX
            raise StudyMismatchError(
                f"study {name!r}, the confirmation stage of {name.removesuffix('.confirm')!r}, does not exist in this "
                f"store: `make evaluate NAME={name.removesuffix('.confirm')}` with evaluate.top_k > 1 (or --top-k) "
                "makes it and queues its trials") from None
        raise StudyMismatchError(
            f"study {name!r} does not exist in this store; create it first with `make study NAME={name}` "
            f"(workers never create studies)"
        ) from None


def open_study(name: str, url: str, *, max_backoff: float | None = None, settle_deadline: float | None = None,
               **kwargs: Any) -> optuna.Study:
    """Study `name` in the store at `url` (it must exist); with `max_backoff`, behind the resilient store
    that waits out outages (workers), else plain (commands, which report a store error at once).
    settle_deadline: JOURNAL_SETTLE_DEADLINE, for a PostgreSQL journal store (default 120 s)."""
    storage = open_storage(url) if settle_deadline is None else open_storage(url, settle_deadline=settle_deadline)
    if max_backoff is not None:
        storage = resilient(storage, max_backoff=max_backoff)
    return load_existing(name, storage, **kwargs)


def close_study(study: optuna.Study) -> None:
    """Give back the study's database connections."""
    storage = storage_of(study)
    close_storage(storage.backend if isinstance(storage, ResilientStorage) else storage)


@dataclass(frozen=True)
class StudyCounts:
    """A study's trials by state, its budget and its best trial (single-objective studies only)."""

    study: str
    n_complete: int
    n_pruned: int
    n_fail: int
    n_running: int
    n_waiting: int
    budget: int | None = None
    stopped: str | None = None
    best_value: float | None = None
    best_params: dict[str, Any] | None = None
    best_trial: int | None = None

    @property
    def n_finished(self) -> int:
        return self.n_complete + self.n_pruned + self.n_fail


def counts(study: optuna.Study) -> StudyCounts:
    trials = [t for t in study.get_trials(deepcopy=False) if not placeholder(t)]  # never trained, never counted
    by_state = {s: sum(t.state == s for t in trials) for s in TrialState}
    best = None
    if len(study.directions) == 1 and by_state[TrialState.COMPLETE]:
        try:  # Optuna's: by the study's direction, among the feasible trials of a constrained study
            best = study.best_trial
        except ValueError:  # none complete and feasible
            best = None
    return StudyCounts(
        study=study.study_name, n_complete=by_state[TrialState.COMPLETE], n_pruned=by_state[TrialState.PRUNED],
        n_fail=by_state[TrialState.FAIL], n_running=by_state[TrialState.RUNNING],
        n_waiting=by_state[TrialState.WAITING], budget=_budget(study),
        stopped=study.user_attrs.get(attrs.STUDY_STOPPED), best_value=best.value if best else None,
        best_params=best.params if best else None, best_trial=best.number if best else None)


def _budget(study: optuna.Study) -> int | None:
    """The trials the study will finish: its budget, and the heads promoted to fine-tuning once they are."""
    budget = study.user_attrs.get(attrs.STUDY_BUDGET)
    promoted = study.user_attrs.get(attrs.FINE_TUNE_PROMOTED) or []
    return None if budget is None else budget + len(promoted)


def counter_line(c: StudyCounts) -> str:
    """One line of `counts`: what `make study` prints as trials finish, and `make status`'s first."""
    best = "none yet" if c.best_value is None else f"{c.best_value:.4f} (trial {c.best_trial})"
    stopped = f"; STOPPED: {c.stopped}" if c.stopped else ""
    return (f"[study {c.study}] {c.n_finished}/{c.budget} finished: {c.n_complete} complete, "
            f"{c.n_pruned} pruned, {c.n_fail} failed; {c.n_running} running; best {best}{stopped}")


def budget_used(study: optuna.Study) -> int:
    """Trials counted against the budget: the search's (a fine-tuning stage's trials have their own count)."""
    trials = head_trials(study.get_trials(deepcopy=False))
    done = retried(trials)
    return sum(t.state in BUDGET_STATES and not (t.state == TrialState.FAIL and t.number in done) for t in trials)


def failure_streak(study: optuna.Study, limit: int) -> str | None:
    """Why the study should stop, when its last `limit` finished trials (since it was last resumed)
    all failed for the same reason of their own; None otherwise (or with limit 0)."""
    if limit < 1:
        return None
    since = int(study.user_attrs.get(attrs.STUDY_STREAK_FROM, 0))
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                 TrialState.FAIL)) if t.number >= since]
    # Outside causes are not the trials' own; a COMPLETE or PRUNED trial counts whatever reason a reaper
    # that lost the race to its tell left on it.
    done = [t for t in done if t.state != TrialState.FAIL or t.user_attrs.get(attrs.FAIL_REASON) not in OUTSIDE_CAUSES]
    last = sorted(done, key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))[-limit:]
    reasons = {t.user_attrs.get(attrs.FAIL_REASON) for t in last}
    if len(last) < limit or any(t.state != TrialState.FAIL for t in last) or len(reasons) != 1:
        return None
    example = last[-1].user_attrs.get(attrs.FAIL_MESSAGE, "")
    return (f"the last {limit} trials ({', '.join(str(t.number) for t in last)}) all failed with reason "
            f"{reasons.pop()!r} (max_consecutive_failures={limit}); the last said: {example[:300]}. Fix the cause, "
            f"then run the study again (`make study` resumes it)")


def stop_study(study: optuna.Study, reason: str) -> None:
    """Tell every worker of the study to stop (each checks before asking for a trial)."""
    if not study.user_attrs.get(attrs.STUDY_STOPPED):
        study.set_user_attr(attrs.STUDY_STOPPED, reason)
        logger.error("study %s stopped: %s", study.study_name, reason)


def stopped_because(study: optuna.Study) -> str | None:
    return study.user_attrs.get(attrs.STUDY_STOPPED) or None


def resume(study: optuna.Study) -> None:
    """A person ran the study again: lift a stop, and count a new failure streak from here."""
    if study.user_attrs.get(attrs.STUDY_STOPPED):
        logger.info("study %s was stopped (%s); resuming it", study.study_name, study.user_attrs[attrs.STUDY_STOPPED])
        study.set_user_attr(attrs.STUDY_STOPPED, None)
        study.set_user_attr(attrs.STUDY_STREAK_FROM, len(study.get_trials(deepcopy=False)))
