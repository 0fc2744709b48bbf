"""Failing a trial for a cause outside it, and queuing its retry: lineages, the reaper's judgement.

One mechanism for every store. Optuna ships a heartbeat for RDB stores only; its thread stops at
the first database error, and stale trials are reaped only when some worker asks for a trial. So
the worker runs its own heartbeat and reaper threads (search.worker._liveness), and this module
holds what they do to the store: fail a silent trial and queue its retry with Optuna's
RetryHeartbeatStaleTrialCallback. Store outages are waited out below this module, by the resilient
store (search.study._store).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from search.errors import FailReason
from search.study._store import is_duplicate, outages_met, storage_of, trial_id
from storage import attrs

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _pinned_experimental() -> Iterator[None]:
    """Optuna marks the retry callback experimental; we pin optuna==5.0.*, so its warning is noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _queue_retry(study: optuna.Study, failed: FrozenTrial) -> bool:
    """Queue the failed trial's retry; False if it had one already (the store refused a second)."""
    # With the attributes just written. A copy: the journal and in-memory stores return their cached
    # trial, and Optuna's callback appends to the inherited retry_history list in place.
    fresh = copy.deepcopy(storage_of(study).get_trial(trial_id(failed)))
    # The retry inherits them all but the heartbeat (its own worker beats as it starts it: _last_beat)
    # and the mark that a retry is due (this is it); it names the trial it retries, once per store
    # (attrs.RETRY_OF_TRIAL: a second insert fails on the RDB layout, even one the resilient store
    # retried after the first committed and its acknowledgement was lost).
    fresh.system_attrs = {k: v for k, v in fresh.system_attrs.items() if k not in (attrs.HEARTBEAT, attrs.RETRY_DUE)}
    fresh.system_attrs[attrs.RETRY_OF_TRIAL] = trial_id(failed)
    try:
        with _pinned_experimental():
            RetryHeartbeatStaleTrialCallback(max_retry=None, inherit_intermediate_values=True)(study, fresh)
    except Exception as exc:
        if not is_duplicate(exc):
            raise
        logger.info("trial %d: its retry was queued already (%s)", failed.number, type(exc).__name__)
        return False
    return True


def lineage(trial: FrozenTrial) -> int:
    """The number of the first trial in a retry chain (the trial itself if it is no retry)."""
    with _pinned_experimental():
        original = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return trial.number if original is None else original


def _fail(study: optuna.Study, frozen: FrozenTrial, reason: FailReason, message: str,
          system: dict[str, object] | None = None) -> bool:
    """Record why, then fail the trial; False if it had finished already (someone got there first)."""
    storage = storage_of(study)
    try:  # the reason first: once failed, the trial is read-only
        for key, value in (system or {}).items():
            storage.set_trial_system_attr(trial_id(frozen), key, value)
        storage.set_trial_user_attr(trial_id(frozen), attrs.FAIL_REASON, FailReason(reason).value)
        storage.set_trial_user_attr(trial_id(frozen), attrs.FAIL_MESSAGE, message)
        return storage.set_trial_state_values(trial_id(frozen), state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # someone else (another worker's reaper) finished it, and queued what was due


def _silent_before(study: optuna.Study, frozen: FrozenTrial) -> int:
    """How often this trial's lineage went silent before it: counted from its finished predecessors
    (Optuna's retry_history), not from an attribute a concurrent reaper may be writing right now."""
    trials = study.get_trials(deepcopy=False)
    history = frozen.system_attrs.get(attrs.RETRY_HISTORY, [])
    return sum(trials[n].user_attrs.get(attrs.FAIL_REASON) == FailReason.STALE for n in history if n < len(trials))


def fail_silent(study: optuna.Study, frozen: FrozenTrial, message: str, *, max_stale_retries: int) -> bool:
    """Fail a trial whose worker went silent or died (`stale`), and queue its retry unless its
    lineage has gone silent more than `max_stale_retries` times. False if it had finished."""
    stale = _silent_before(study, frozen) + 1
    retry = stale <= max_stale_retries
    if not retry:
        message += (f"; not retried: its lineage went silent {stale} times (MAX_STALE_RETRIES="
                    f"{max_stale_retries}), so the trial itself may kill its worker")
    if not _fail(study, frozen, FailReason.STALE, message, {attrs.STALE_FAILURES: stale, attrs.RETRY_DUE: retry}):
        return False
    if retry:
        _queue_retry(study, frozen)
    logger.warning("trial %d: %s: failed it%s", frozen.number, message, " and queued its retry" if retry else "")
    return True


def retried(trials: list[FrozenTrial]) -> set[int]:
    """The numbers of the trials that have a retry (each retry lists its predecessors, Optuna's retry_history)."""
    return {n for t in trials for n in t.system_attrs.get(attrs.RETRY_HISTORY, ())}


def queue_due_retry(study: optuna.Study, number: int) -> bool:
    """Queue the retry a failed trial is due when the process that failed it died before queuing it;
    False if it has one by now. The caller holds the study's lock across workers (two queuing it at
    once would run the configuration twice)."""
    trials = study.get_trials(deepcopy=False)
    frozen = trials[number]
    if frozen.state != TrialState.FAIL or not frozen.system_attrs.get(attrs.RETRY_DUE) or number in retried(trials):
        return False
    return _queue_retry(study, storage_of(study).get_trial(trial_id(frozen)))


def retries_due(study: optuna.Study) -> list[int]:
    """Failed trials whose retry is due but not queued yet: failing a trial and queuing its retry are
    two store calls, and a worker that left in between (its budget met, nothing RUNNING) would
    strand the retry as WAITING, with nobody left to run it."""
    trials = study.get_trials(deepcopy=False)
    done = retried(trials)
    return [t.number for t in trials
            if t.state == TrialState.FAIL and t.system_attrs.get(attrs.RETRY_DUE) and t.number not in done]


class Reaper:
    """Fails RUNNING trials that went silent, judged only by what this reaper observed itself, on its
    own monotonic clock: a trial is silent once its heartbeat has not changed for `grace` seconds of
    this reaper's unbroken contact with the store. No timestamp is compared across machines (the
    heartbeat is read as a token that changes, not as a time), so clock skew and time zones between
    workers and reapers do not matter, and a trial with no heartbeat yet is judged from when this
    reaper first saw it. An outage is never judged as death: a store call that failed, or took more
    than grace/2 (the resilient store waited one out), a call of this process (any thread) that had to
    wait to retry since the last pass (an outage shorter than grace/2 still leaves other workers'
    heartbeats in a backoff of up to STORE_MAX_BACKOFF), or a pass more than `grace` after the last
    one (this process was stalled) forgets every observation, and the trials then get a whole grace
    period of contact to beat again; after the store was out, `settle` seconds more (the longest
    backoff of a worker's store calls, STORE_MAX_BACKOFF: its heartbeat may still be waiting to
    retry). Kubernetes' node controller judges node heartbeats the same way, by when it saw them change.
    When every running trial (two or more) is silent at once, the store is suspected before the
    workers: they are failed only after a second grace period."""

    def __init__(self, grace: float, max_stale_retries: int = 1, *, settle: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.grace, self.max_stale_retries, self.settle, self.clock = grace, max_stale_retries, settle, clock
        self.seen: dict[int, tuple[object, float]] = {}  # trial number -> (its heartbeat, when it last changed)
        self._last_pass: float | None = None
        self._hold_until = -math.inf  # after an outage: no trial is judged silent from before this
        self._outages_met: int | None = None  # the store's count of calls that waited out an outage, last pass

    def __call__(self, study: optuna.Study) -> list[int]:
        started, before = self.clock(), outages_met(study)
        try:
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except BaseException:
            self.forget("a store call failed", self.clock(), outage=True)
            raise
        now = self.clock()
        gap = None if self._last_pass is None else started - self._last_pass
        # Since the last pass (the first pass: since this call began)
        met, self._outages_met = (before if self._outages_met is None else self._outages_met), outages_met(study)
        if now - started > self.grace / 2:
            self.forget(f"a store call took {now - started:.0f}s", now, outage=True)
        elif self._outages_met != met:
            self.forget("the store was unreachable for a moment", now, outage=True)
        elif gap is not None and gap > self.grace:
            self.forget(f"this reaper did not look for {gap:.0f}s", now, outage=False)
        self._last_pass = now
        self.seen = {t.number: self.seen.get(t.number, (None, now)) for t in running}
        silent: list[tuple[FrozenTrial, float]] = []  # (trial, seconds silent that count)
        for trial in running:
            beat, since = self.seen[trial.number]
            token = trial.system_attrs.get(attrs.HEARTBEAT)
            quiet = now - max(since, self._hold_until)
            if token != beat:
                self.seen[trial.number] = (token, now)
            elif quiet > self.grace:
                silent.append((trial, quiet))
        limit = self.grace
        if len(silent) >= 2 and len(silent) == len(running):
            # Every running trial silent at once: the store's write path (or the way to it) is the
            # likelier cause than every worker dying together; they get one more grace period.
            limit = 2 * self.grace
            if any(quiet <= limit for _, quiet in silent):
                logger.warning("reaper: all %d running trials went silent at once: suspecting the store, not the "
                               "workers; waiting another grace period (%.0fs) before failing them", len(silent),
                               self.grace)
        reaped = []
        for trial, quiet in silent:
            message = f"no heartbeat for {now - self.seen[trial.number][1]:.0f}s (grace {self.grace:.0f}s)"
            if quiet > limit and fail_silent(study, trial, message, max_stale_retries=self.max_stale_retries):
                reaped.append(trial.number)
        return reaped

    def forget(self, why: str, now: float, *, outage: bool) -> None:
        """Judge nothing observed before `now`: every trial starts a new grace period, after `settle`
        when the store was out (the workers' heartbeats may still be waiting in their backoff)."""
        if self.seen:
            logger.info("reaper: %s; every running trial gets a new grace period", why)
        self.seen, self._last_pass = {}, None
        self._hold_until = now + (self.settle if outage else 0.0)


def reap_worker(study: optuna.Study, worker: str, exit_code: int, *, max_stale_retries: int = 1) -> list[int]:
    """Fail the RUNNING trials of a worker process seen to exit (it will send no heartbeat again),
    at once rather than after the grace period, and queue their retries."""
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(attrs.WORKER) == worker and fail_silent(
                study, trial, f"its worker {worker} exited with {exit_code}", max_stale_retries=max_stale_retries):
            reaped.append(trial.number)
    return reaped


def fail_and_retry(study: optuna.Study, trial_number: int, reason: FailReason, message: str) -> None:
    """Record a trial as failed for a cause outside it (`interrupted`, `store`, `fatal`) and queue
    its retry (same parameters, resuming from the checkpoint)."""
    frozen = storage_of(study).get_trial(trial_id(study.get_trials(deepcopy=False)[trial_number]))  # fresh
    if frozen.state != TrialState.RUNNING or not _fail(study, frozen, reason, message, {attrs.RETRY_DUE: True}):
        # Another worker's reaper got there first (this one was cut off past the grace period):
        # it failed the trial and queued the retry already.
        logger.warning("trial %d was already failed by the reaper (its retry is queued); nothing more to do",
                       trial_number)
        return
    _queue_retry(study, frozen)
