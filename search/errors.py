"""Errors that tell the worker what to do.

- `TrialFailure(reason, message)`: this trial failed for a reason of its own (nan, oom, build, a
  bad configuration); it is recorded on the trial and the worker goes on.
- `FatalError`: nothing this worker does next can succeed (a study file or store that is wrong,
  a builder that cannot be imported, a dataset that vanished, a broken install); the worker stops
  with a message and exit code 2, which a restart policy reads as "do not restart".
- `StudyStopped`: the study's last `max_consecutive_failures` trials all failed for the same
  reason; every worker stops with that reason (a fatal error of the study, not of one worker).
- `WorkerStopping` (SIGTERM/SIGINT, at an epoch boundary) and `TrialLost` (the reaper took the
  trial over) are neither: the trial is retried elsewhere.
Store outages are none of these: the resilient store waits them out (`search/study/_store.py`).
"""

from __future__ import annotations

import enum

from data import DatasetError
from storage import StorageConfigError, StorageUnavailableError

FATAL_EXIT = 2  # the exit code of a fatal error: Kubernetes' podFailurePolicy and compose read it


class FailReason(enum.StrEnum):
    """Why a trial failed: the trial's `fail_reason` attribute (storage.attrs.FAIL_REASON).

    The trial's own reasons count towards a study's failure streak and the retry caps; outside
    causes (`outside`) say nothing about the configuration: the trial is retried with the same
    parameters and never makes a streak."""

    NAN = "nan"  # the loss became NaN or infinite
    OOM = "oom"  # the accelerator or host ran out of memory
    BUILD = "build"  # the architecture cannot be built with these knobs
    ERROR = "error"  # any other error of the trial's own (its message says which)
    STALE = "stale"  # its worker went silent or died (the reaper failed it); retries capped per lineage
    INTERRUPTED = "interrupted"  # SIGTERM/SIGINT: the worker was asked to stop
    STORE = "store"  # the store failed under it
    FATAL = "fatal"  # its worker hit a fatal error (search.errors.FATAL) during it

    @property
    def outside(self) -> bool:
        return self in OUTSIDE_CAUSES


OUTSIDE_CAUSES = frozenset({FailReason.STALE, FailReason.INTERRUPTED, FailReason.STORE, FailReason.FATAL})


class FatalError(Exception):
    """Stop the worker: no further trial can succeed until a person fixes something."""


class StudySpecError(FatalError, ValueError):
    """A study file is invalid. Raised before anything is written to the store."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where


class StudyMismatchError(FatalError, RuntimeError):
    """A worker's study file differs from the one the study was created with, or the study is missing."""


class StudyStopped(FatalError):
    """The study's last trials all failed for the same reason; its workers stop."""


class TrialFailure(Exception):
    """One trial failed for a known reason (nan, oom, build, error); record it and go on."""

    def __init__(self, reason: FailReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = FailReason(reason)
        self.message = message


class WorkerStopping(Exception):
    """SIGTERM or SIGINT arrived; the worker stops at the next epoch boundary."""


class TrialLost(Exception):
    """The trial was failed by the reaper while this worker was paused or cut off."""


# Exceptions raised inside a trial that mean the worker itself is broken, not the configuration:
# an import that fails (a typo in a builder's module, a broken install) fails every trial alike;
# so do a dataset that vanished and a store that refuses our credentials.
FATAL: tuple[type[BaseException], ...] = (FatalError, ImportError, SyntaxError, DatasetError, StorageConfigError,
                                          StorageUnavailableError)
