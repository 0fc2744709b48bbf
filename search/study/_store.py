"""The resilient store, and the one module that touches Optuna's private attributes.

`ResilientStorage` wraps any Optuna storage the way Optuna's own `_CachedStorage` does: it
delegates every call to its backend and adds one concern, waiting through store outages. Each
call that fails with a connection-level error is retried with a jittered exponential backoff
(1 s doubling to `max_backoff`), logged at most once a minute, and never given up: a PostgreSQL
restart costs a worker a pause, not its trial. So the rest of `search/` calls plain Optuna
(`study.ask`, `trial.report`, `study.tell`).

Retrying a write is safe here: Optuna's setters are idempotent (an attribute or intermediate value
written twice holds the same value), the journal backend looks an append cut off in flight up by
its batch id before writing it again (`storage/_journal_pg.py`), and a `create_new_trial` retried
after an ambiguous failure leaves at worst an orphan RUNNING trial without heartbeats, which the
reaper fails.

"The trial was finished by someone else" (the reaper failed it while this worker was paused or
cut off) comes out as one exception, `TrialTakenOver`, whichever call ran into it.

Popping a queued trial (Optuna's `_pop_waiting_trial_id`: WAITING -> RUNNING) is the write whose
repeat answers wrongly: when the first attempt landed but its acknowledgement was lost, the retry
finds the trial RUNNING and says "taken by another worker", and the trial would stay RUNNING with no
worker until the reaper failed it as silent. So a pop retried after an error that answers False
reads the trial: RUNNING with a start time (set by the store as it committed the pop) inside the
failed attempt's own span is this worker's pop, and is taken (`set_trial_state_values`, below).
"""

from __future__ import annotations

import abc
import datetime
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import optuna
import sqlalchemy.exc
import tenacity
from optuna.storages import BaseStorage

from search.settings import Settings
from storage import attrs

logger = logging.getLogger(__name__)
MAX_BACKOFF: float = Settings.model_fields["store_max_backoff"].default  # STORE_MAX_BACKOFF, written once in Settings


class TrialTakenOver(optuna.exceptions.UpdateFinishedTrialError):
    """The trial is no longer this worker's: it was finished (usually failed by the reaper, which
    queued its retry) while this worker was paused or cut off from the store."""


def storage_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean "the store is unreachable right now", as opposed to "you asked for
    something wrong": connection-level driver errors and Optuna's wrapper of them; grpc.RpcError: the
    gRPC storage proxy unreachable or restarting."""
    return (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
            ConnectionError, grpc.RpcError)


REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)  # the proxy's token check


def is_duplicate(exc: BaseException) -> bool:
    """A retry the store refused as the failed trial's second (the one-retry index the create step
    adds on the RDB layout, storage._rdb), directly or through the storage proxy, whose server reports
    the database's error as UNKNOWN with its text. Any other constraint violation is no duplicate."""
    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        text = str(exc)
    elif isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNKNOWN:
        text = exc.details() or ""
    else:
        return False
    # PostgreSQL names the index; SQLite names the column (the index is the only unique one on it alone)
    return attrs.ONE_RETRY_INDEX in text or "UNIQUE constraint failed: trial_system_attributes.value_json" in text


class _Backoff:
    """1 s doubling to `max_wait`, each wait jittered by x0.5-1.5; one warning a minute at most."""

    def __init__(self, max_wait: float, jitter: Callable[[], float] = random.random) -> None:
        self.max_wait, self.jitter, self.last_log = max_wait, jitter, float("-inf")

    def wait(self, state: tenacity.RetryCallState) -> float:
        return min(2.0 ** min(state.attempt_number - 1, 16), self.max_wait) * (0.5 + self.jitter())

    def log(self, state: tenacity.RetryCallState) -> None:
        now = time.monotonic()
        if now - self.last_log > 60:
            exc = state.outcome.exception() if state.outcome else None
            logger.warning("store unreachable while calling %s (%s); retrying, down %.0fs so far",
                           state.fn.__name__ if state.fn else "it", type(exc).__name__, state.seconds_since_start)
            self.last_log = now


# Seconds each thread has spent in store calls (round trips, and waits through outages): the
# objective reads its training thread's figure for the trial's time breakdown (attrs.TIME_BREAKDOWN).
_spent = threading.local()


def store_seconds() -> float:
    """Seconds this thread has spent inside ResilientStorage calls since it started (monotonic)."""
    return getattr(_spent, "seconds", 0.0)


class ResilientStorage(BaseStorage):
    """Any Optuna storage, with every call retried through outages (see the module's docstring)."""

    def __init__(self, backend: BaseStorage, *, max_backoff: float = MAX_BACKOFF,
                 sleep: Callable[[float], None] = time.sleep, jitter: Callable[[], float] = random.random) -> None:
        self.backend = backend
        self._backoff = _Backoff(max_backoff, jitter)
        self._sleep = sleep
        self._errors = storage_errors()
        # How many calls of this process (any thread) found the store unreachable and waited to retry
        # (once a call, however long it waits): the reaper reads it (search.study._retries.Reaper),
        # because a reaper whose own call got through an outage quickly must still not judge
        # heartbeats that are waiting out a longer backoff than its own.
        self.outages_met = 0

    def _waiting(self, state: tenacity.RetryCallState) -> None:
        if state.attempt_number == 1:  # a call's first wait: one stuck call must not hold the reaper forever
            self.outages_met += 1
        self._backoff.log(state)

    def _transient(self, exc: BaseException) -> bool:
        """An outage, not a refusal: the storage proxy refusing this client's token is not retried."""
        if isinstance(exc, grpc.RpcError) and exc.code() in REFUSED or is_duplicate(exc):
            return False
        return isinstance(exc, self._errors)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._retried(getattr(self.backend, name), *args, **kwargs)

    def _retried(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        retrying = tenacity.Retrying(retry=tenacity.retry_if_exception(self._transient), wait=self._backoff.wait,
                                     before_sleep=self._waiting, sleep=self._sleep, reraise=True)
        started = time.perf_counter()
        try:
            return retrying(method, *args, **kwargs)
        except optuna.exceptions.UpdateFinishedTrialError as exc:
            if isinstance(exc, TrialTakenOver):
                raise
            raise TrialTakenOver(f"{exc} (finished elsewhere: the reaper failed it while this worker was paused "
                                 "or cut off, and queued its retry)") from exc
        finally:
            _spent.seconds = getattr(_spent, "seconds", 0.0) + time.perf_counter() - started

    def __getstate__(self) -> dict:
        return self.__dict__

    def remove_session(self) -> None:
        self.backend.remove_session()

    def set_trial_state_values(self, trial_id: int, state: optuna.trial.TrialState,
                               values: Any = None) -> bool:
        """Retried through outages; a pop (RUNNING, no values) retried after an ambiguous failure
        that then answers "taken" is recognised as this worker's own when it was (module docstring)."""
        if state != optuna.trial.TrialState.RUNNING or values is not None:
            return self._call("set_trial_state_values", trial_id, state, values)
        spans: list[list[datetime.datetime]] = []

        def pop(*args: Any) -> bool:
            spans.append([datetime.datetime.now()])
            try:
                return self.backend.set_trial_state_values(*args)
            finally:
                spans[-1].append(datetime.datetime.now())

        if self._retried(pop, trial_id, state, values):
            return True
        if len(spans) < 2:  # refused at the first attempt: another worker's
            return False
        frozen = self._call("get_trial", trial_id)
        started = frozen.datetime_start
        ours = frozen.state == optuna.trial.TrialState.RUNNING and started is not None and any(
            begin <= started <= end for begin, end in spans[:-1])
        if ours:
            logger.warning("trial %d: its pop landed before the store's acknowledgement was lost; this worker "
                           "runs it", frozen.number)
        return ours

    def check_trial_is_updatable(self, trial_id: int, trial_state: optuna.trial.TrialState) -> None:
        try:
            self.backend.check_trial_is_updatable(trial_id, trial_state)
        except optuna.exceptions.UpdateFinishedTrialError as exc:
            raise TrialTakenOver(str(exc)) from exc


# Every data call of BaseStorage goes through _call (and so through the retries).
_DELEGATED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "create_new_trial", "set_trial_param", "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id", "get_trial_param", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials",
    "get_best_trial", "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs",
)


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"{name} of the backend, retried through outages."
    return method


for _name in _DELEGATED:
    setattr(ResilientStorage, _name, _delegate(_name))
abc.update_abstractmethods(ResilientStorage)


def resilient(storage: BaseStorage, *, max_backoff: float = MAX_BACKOFF) -> ResilientStorage:
    """The storage a worker uses: Optuna's cache in front of an RDB store (as `optuna.load_study`
    would add), then the retries around everything."""
    if isinstance(storage, ResilientStorage):
        return storage
    return ResilientStorage(optuna.storages.get_storage(storage), max_backoff=max_backoff)


# --- Optuna's private attributes: read here and nowhere else ---------------------------------
# tests/search/study/test_resilient_store.py::test_the_private_attributes_we_rely_on_still_exist fails if an Optuna or
# Keras upgrade removes one of them.


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    # Optuna has no public trial id; the storage API is keyed by it (heartbeats, the reaper).
    return trial._trial_id


def outages_met(study: optuna.Study) -> int:
    """How many store calls of this process have waited to retry through an outage (0 for a store
    that is not the resilient one: it waits through none)."""
    return getattr(storage_of(study), "outages_met", 0)


def storage_of(study: optuna.Study) -> BaseStorage:
    # Optuna exposes no public handle on a study's storage; heartbeats, the reaper and the retry
    # callback write trial attributes and states through it directly.
    return study._storage


def fresh_trial(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The trial as the store has it now (the reaper may have failed it), not Optuna's cached copy."""
    return storage_of(trial.study).get_trial(trial_id(trial))


def restart_from_epoch(model: Any, epoch: int) -> None:
    # Keras's BackupAndRestore tells fit() where to resume through the model's `_initial_epoch`;
    # an unreadable checkpoint must reset it to start over (Keras has no public setter).
    model._initial_epoch = epoch
