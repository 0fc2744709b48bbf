"""What keeps work from being lost: heartbeats, the reaper, retries, signals.

One mechanism for every store. Optuna ships a heartbeat for RDB stores only; its thread stops at
the first database error, and stale trials are reaped only when some worker asks for a trial.
So each worker runs a heartbeat thread that survives errors, and a reaper thread that fails
stale trials on its own clock; the retry itself is Optuna's RetryHeartbeatStaleTrialCallback.
Store outages are waited out below this module, by the resilient store (`search/_store.py`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from search._store import storage_of, trial_id
from storage import attrs

logger = logging.getLogger(__name__)
Clock = Callable[[], float]


@dataclass(frozen=True)
class Liveness:
    """Heartbeat interval, grace period and the retry cap of silent lineages (from Settings).

    A trial whose worker went silent may itself be the cause (the kernel's OOM killer, a crash in
    native code), so a lineage is retried after at most `max_stale_retries` such failures. A
    SIGTERM or a store outage is never the trial's doing: those are retried without limit."""

    interval: float = 10.0
    grace: float = 60.0
    max_stale_retries: int = 1

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.grace <= 0:
            raise ValueError(f"heartbeat interval and grace period must be positive but got "
                             f"{self.interval} and {self.grace}")


@contextlib.contextmanager
def _pinned_experimental() -> Iterator[None]:
    """Optuna marks the retry callback experimental; we pin optuna==5.0.*, so its warning is noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _queue_retry(study: optuna.Study, failed: FrozenTrial) -> None:
    # With the attributes just written. A copy: the journal and in-memory stores return their cached
    # trial, and Optuna's callback appends to the inherited retry_history list in place.
    fresh = copy.deepcopy(storage_of(study).get_trial(trial_id(failed)))
    # The retry inherits them all but the heartbeat: its own worker beats as it starts it (_last_beat).
    fresh.system_attrs = {k: v for k, v in fresh.system_attrs.items() if k != attrs.HEARTBEAT}
    with _pinned_experimental():
        RetryHeartbeatStaleTrialCallback(max_retry=None, inherit_intermediate_values=True)(study, fresh)


def lineage(trial: FrozenTrial) -> int:
    """The number of the first trial in a retry chain (the trial itself if it is no retry)."""
    with _pinned_experimental():
        original = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return trial.number if original is None else original


def _last_beat(trial: FrozenTrial) -> float:
    """The trial's last heartbeat (seconds since the epoch, the worker's clock). Before the first, which
    a worker writes as it starts a trial, its start: Optuna's datetime_start is the asking machine's
    naive local time, which a reaper in another time zone misreads by hours, so it is read only then."""
    beat = trial.system_attrs.get(attrs.HEARTBEAT)
    if beat is not None:
        return float(beat)
    return trial.datetime_start.timestamp() if trial.datetime_start else 0.0


def _fail(study: optuna.Study, frozen: FrozenTrial, reason: str, message: str,
          system: dict[str, object] | None = None) -> bool:
    """Record why, then fail the trial; False if it had finished already (someone got there first)."""
    storage = storage_of(study)
    try:  # the reason first: once failed, the trial is read-only
        for key, value in (system or {}).items():
            storage.set_trial_system_attr(trial_id(frozen), key, value)
        storage.set_trial_user_attr(trial_id(frozen), attrs.FAIL_REASON, reason)
        storage.set_trial_user_attr(trial_id(frozen), attrs.FAIL_MESSAGE, message)
        return storage.set_trial_state_values(trial_id(frozen), state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # someone else (another worker's reaper) finished it, and queued what was due


def _silent_before(study: optuna.Study, frozen: FrozenTrial) -> int:
    """How often this trial's lineage went silent before it: counted from its finished predecessors
    (Optuna's retry_history), not from an attribute a concurrent reaper may be writing right now."""
    trials = study.get_trials(deepcopy=False)
    history = frozen.system_attrs.get(attrs.RETRY_HISTORY, [])
    return sum(trials[n].user_attrs.get(attrs.FAIL_REASON) == "stale" for n in history if n < len(trials))


def fail_silent(study: optuna.Study, frozen: FrozenTrial, message: str, *, max_stale_retries: int) -> bool:
    """Fail a trial whose worker went silent or died (`stale`), and queue its retry unless its
    lineage has gone silent more than `max_stale_retries` times. False if it had finished."""
    stale = _silent_before(study, frozen) + 1
    retry = stale <= max_stale_retries
    if not retry:
        message += (f"; not retried: its lineage went silent {stale} times (MAX_STALE_RETRIES="
                    f"{max_stale_retries}), so the trial itself may kill its worker")
    if not _fail(study, frozen, "stale", message, {attrs.STALE_FAILURES: stale}):
        return False
    if retry:
        _queue_retry(study, frozen)
    logger.warning("trial %d: %s: failed it%s", frozen.number, message, " and queued its retry" if retry else "")
    return True


def reap(study: optuna.Study, *, grace: float, max_stale_retries: int = 1, now: float | None = None) -> list[int]:
    """Fail RUNNING trials whose heartbeat is older than `grace` and queue a retry of each."""
    now = time.time() if now is None else now
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        silent = now - _last_beat(trial)
        if silent > grace and fail_silent(study, trial, f"no heartbeat for {silent:.0f}s (grace {grace:.0f}s)",
                                          max_stale_retries=max_stale_retries):
            reaped.append(trial.number)
    return reaped


def reap_worker(study: optuna.Study, worker: str, exit_code: int, *, max_stale_retries: int = 1) -> list[int]:
    """Fail the RUNNING trials of a worker process seen to exit (it will send no heartbeat again),
    at once rather than after the grace period, and queue their retries."""
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(attrs.WORKER) == worker and fail_silent(
                study, trial, f"its worker {worker} exited with {exit_code}", max_stale_retries=max_stale_retries):
            reaped.append(trial.number)
    return reaped


def fail_and_retry(study: optuna.Study, trial_number: int, reason: str, message: str) -> None:
    """Record a trial as failed for a cause outside it (`interrupted`, `store`, `fatal`) and queue
    its retry (same parameters, resuming from the checkpoint)."""
    frozen = storage_of(study).get_trial(trial_id(study.get_trials(deepcopy=False)[trial_number]))  # fresh
    if frozen.state != TrialState.RUNNING or not _fail(study, frozen, reason, message):
        # Another worker's reaper got there first (this one was cut off past the grace period):
        # it failed the trial and queued the retry already.
        logger.warning("trial %d was already failed by the reaper (its retry is queued); nothing more to do",
                       trial_number)
        return
    _queue_retry(study, frozen)


class Background:
    """The worker's two threads: heartbeats for its current trial, and the reaper.

    `clock` and `wait` are injectable so tests can drive them without sleeping."""

    def __init__(self, study: optuna.Study, liveness: Liveness, *, clock: Clock = time.time) -> None:
        self.study, self.liveness, self.clock = study, liveness, clock
        self.trial_id: int | None = None
        self.stopped = threading.Event()
        self._threads = [threading.Thread(target=self._beat_loop, name="heartbeat", daemon=True),
                         threading.Thread(target=self._reap_loop, name="reaper", daemon=True)]

    def __enter__(self) -> Background:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for t in self._threads:  # a reaper between failing a trial and queuing its retry finishes both
            if t.is_alive():
                t.join(timeout=30)

    @contextlib.contextmanager
    def beating(self, trial: optuna.Trial) -> Iterator[None]:
        """Keep `trial` alive while the block runs; whatever way it ends, the beats stop."""
        self.trial_id = trial_id(trial)
        try:
            self.beat_now()
            yield
        finally:
            self.trial_id = None

    def beat_now(self) -> None:
        current = self.trial_id
        if current is None:
            return
        try:
            storage_of(self.study).set_trial_system_attr(current, attrs.HEARTBEAT, self.clock())
        except optuna.exceptions.UpdateFinishedTrialError:
            # That trial ended (or was reaped): nothing to keep alive. Only if it is still the current
            # one: a beat delayed by an outage must not switch off the next trial's heartbeats.
            if self.trial_id == current:
                self.trial_id = None

    def reap_now(self) -> list[int]:
        return reap(self.study, grace=self.liveness.grace, max_stale_retries=self.liveness.max_stale_retries,
                    now=self.clock())

    def _beat_loop(self) -> None:
        interval, grace = self.liveness.interval, self.liveness.grace
        stall = max(3 * interval, grace / 2)  # worth a warning
        last = time.monotonic()
        while not self.stopped.wait(interval):
            now = time.monotonic()
            if self.trial_id is not None and now - last > stall:
                # This thread shares the process with training: native code holding the GIL (graph
                # compilation) or a starved CPU delays it. Past the grace period the trial is reaped.
                logger.warning("heartbeat %.1fs late (interval %.0fs, grace %.0fs): this process was stalled; "
                               "raise GRACE_PERIOD well above such stalls", now - last - interval, interval, grace)
            last = now
            self._guarded(self.beat_now, "heartbeat")
            if time.monotonic() - now > stall:
                logger.warning("heartbeat write took %.1fs (interval %.0fs, grace %.0fs): the store is slow "
                               "or this process was stalled", time.monotonic() - now, interval, grace)

    def _reap_loop(self) -> None:
        while not self.stopped.wait(max(self.liveness.grace / 4, 0.5)):
            self._guarded(self.reap_now, "reaper")

    @staticmethod
    def _guarded(call: Callable[[], object], what: str) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - a background thread must outlive any one error
            logger.debug("%s failed: %s", what, exc)


class StopFlag:
    """SIGTERM/SIGINT set the flag; a second one exits at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None  # the signal that set the flag

    def exit_code(self) -> int | None:
        """128 + the signal, as a shell reports a process a signal ended: not 0, so a Kubernetes
        work-queue Job replaces a worker evicted mid-study instead of counting it as done."""
        return None if self.signum is None else 128 + self.signum

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        if self.event.is_set():
            raise SystemExit(128 + signum)
        logger.warning("%s received: finishing the current epoch, then checkpointing and exiting",
                       signal.Signals(signum).name)
        self.signum = signum
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()
