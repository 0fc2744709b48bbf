"""What keeps work from being lost: heartbeats, the reaper, retries, signals, storage outages.

One mechanism for both stores. Optuna ships a heartbeat for RDB stores only; its thread stops at
the first database error, and stale trials are reaped only when some worker asks for a trial.
So each worker runs a heartbeat thread that survives errors, and a reaper thread that fails
stale trials on its own clock; the retry itself is Optuna's RetryHeartbeatStaleTrialCallback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable
from typing import TypeVar

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

logger = logging.getLogger(__name__)
T = TypeVar("T")

HEARTBEAT_ATTR = "cnn_search:heartbeat"
HEARTBEAT_INTERVAL = float(os.environ.get("HEARTBEAT_INTERVAL", "10"))
GRACE_PERIOD = float(os.environ.get("GRACE_PERIOD", "60"))


@contextlib.contextmanager
def _pinned_experimental():
    """Optuna marks the retry callback experimental; we pin optuna==5.0.*, so its warning is noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


STALE_ATTR = "cnn_search:stale_failures"
# A trial whose worker went silent may itself be the cause (the kernel's OOM killer, a crash in native
# code), so a lineage is retried after at most this many such failures. A SIGTERM or a store outage is
# never the trial's doing: those are retried without limit.
MAX_STALE_RETRIES = int(os.environ.get("MAX_STALE_RETRIES", "1"))

with _pinned_experimental():
    _requeue = RetryHeartbeatStaleTrialCallback(max_retry=None, inherit_intermediate_values=True)


def _queue_retry(study: optuna.Study, trial_id: int) -> None:
    with _pinned_experimental():
        _requeue(study, study._storage.get_trial(trial_id))


class WorkerStopping(Exception):
    """SIGTERM or SIGINT arrived; the worker stops at the next epoch boundary."""


class TrialLost(Exception):
    """The trial was failed by the reaper while this worker was paused or cut off."""


def storage_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc

    return (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.InterfaceError, sqlalchemy.exc.DBAPIError, ConnectionError)


def with_retry(call: Callable[[], T], what: str, *, stop: threading.Event | None = None,
               max_wait: float = 30.0) -> T:
    """Call `call`; on a storage outage back off (1 s doubling to max_wait, jittered) and retry,
    logging once per minute at most. Never gives up unless `stop` is set."""
    delay, last_log, started = 1.0, 0.0, time.monotonic()
    errors = storage_errors()
    while True:
        try:
            return call()
        except errors as exc:
            if stop is not None and stop.is_set():
                raise
            now = time.monotonic()
            if now - last_log > 60:
                logger.warning("store unreachable while trying to %s (%s); retrying, down %.0fs so far",
                               what, type(exc).__name__, now - started)
                last_log = now
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, max_wait)


def lineage(trial: FrozenTrial) -> int:
    """The number of the first trial in a retry chain (the trial itself if it is no retry)."""
    with _pinned_experimental():
        original = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return trial.number if original is None else original


def _last_beat(trial: FrozenTrial) -> float:
    start = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    # A retry inherits its original's system attrs, heartbeat included: never older than its start.
    return max(float(trial.system_attrs.get(HEARTBEAT_ATTR, 0.0)), start)


def reap(study: optuna.Study, grace: float = GRACE_PERIOD) -> list[int]:
    """Fail RUNNING trials whose heartbeat is older than `grace`, and queue a retry of each
    (at most MAX_STALE_RETRIES per lineage)."""
    now = time.time()
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if now - _last_beat(trial) <= grace:
            continue
        silent = now - _last_beat(trial)
        stale = int(trial.system_attrs.get(STALE_ATTR, 0)) + 1  # inherited along the lineage
        retry = stale <= MAX_STALE_RETRIES
        message = f"no heartbeat for {silent:.0f}s (grace {grace:.0f}s)"
        if not retry:
            message += (f"; not retried: its lineage went silent {stale} times (MAX_STALE_RETRIES="
                        f"{MAX_STALE_RETRIES}), so the trial itself may kill its worker")
        try:  # the reason first: once failed, the trial is read-only
            study._storage.set_trial_system_attr(trial._trial_id, STALE_ATTR, stale)
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "stale")
            study._storage.set_trial_user_attr(trial._trial_id, "fail_message", message)
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished, or another reaper got there first
        if retry:
            _queue_retry(study, trial._trial_id)
        logger.warning("trial %d had no heartbeat for %.0fs: failed it%s", trial.number, silent,
                       " and queued its retry" if retry else f" for good ({message})")
        reaped.append(trial.number)
    return reaped


def fail_and_retry(study: optuna.Study, trial_number: int, reason: str, message: str) -> None:
    """Record a trial as failed for a cause outside it (`interrupted`, `store`, `stale` in tests) and
    queue its retry (same parameters, resuming from the checkpoint)."""
    storage = study._storage
    frozen = storage.get_trial(study.get_trials(deepcopy=False)[trial_number]._trial_id)  # fresh, not cached
    try:  # the reason first: once failed, the trial is read-only
        if frozen.state != TrialState.RUNNING:
            raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial_number} is {frozen.state.name}")
        storage.set_trial_user_attr(frozen._trial_id, "fail_reason", reason)
        storage.set_trial_user_attr(frozen._trial_id, "fail_message", message)
        storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another worker's reaper got there first (this one was cut off past the grace period):
        # it failed the trial and queued the retry already.
        logger.warning("trial %d was already failed by the reaper (its retry is queued); nothing more to do",
                       trial_number)
        return
    _queue_retry(study, frozen._trial_id)


class Background:
    """The worker's two threads: heartbeats for its current trial, and the reaper."""

    def __init__(self, study: optuna.Study, *, interval: float = HEARTBEAT_INTERVAL, grace: float = GRACE_PERIOD):
        self.study, self.interval, self.grace = study, interval, grace
        self.trial_id: int | None = None
        self.stopped = threading.Event()
        self._threads = [threading.Thread(target=self._beat, name="heartbeat", daemon=True),
                         threading.Thread(target=self._reap, name="reaper", daemon=True)]

    def __enter__(self) -> Background:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()

    def beat_now(self) -> None:
        if self.trial_id is not None:
            self.study._storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())

    def _beat(self) -> None:
        last, stall = time.monotonic(), max(3 * self.interval, self.grace / 2)  # worth a warning
        while not self.stopped.wait(self.interval):
            now = time.monotonic()
            if self.trial_id is not None and now - last > stall:
                # This thread shares the process with training: native code holding the GIL (graph
                # compilation) or a starved CPU delays it. Past the grace period the trial is reaped.
                logger.warning("heartbeat %.1fs late (interval %.0fs, grace %.0fs): this process was stalled; "
                               "raise GRACE_PERIOD well above such stalls", now - last - self.interval,
                               self.interval, self.grace)
            last = now
            try:
                self.beat_now()
                took = time.monotonic() - now
                if took > stall:
                    logger.warning("heartbeat write took %.1fs (interval %.0fs, grace %.0fs): the store is slow "
                                   "or this process was stalled", took, self.interval, self.grace)
            except optuna.exceptions.UpdateFinishedTrialError:
                self.trial_id = None  # the trial ended (or was reaped): nothing to keep alive
            except Exception as exc:  # an outage must not end the thread
                logger.debug("heartbeat failed: %s", exc)

    def _reap(self) -> None:
        while not self.stopped.wait(max(self.grace / 4, 0.5)):
            try:
                reap(self.study, self.grace)
            except Exception as exc:
                logger.debug("reaper failed: %s", exc)


class StopFlag:
    """SIGTERM/SIGINT set the flag; a second one exits at once."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.event.is_set():
            raise SystemExit(128 + signum)
        logger.warning("%s received: finishing the current epoch, then checkpointing and exiting",
                       signal.Signals(signum).name)
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()
