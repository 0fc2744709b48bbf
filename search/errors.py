"""Error types. A TrialFailure fails one trial and the worker goes on; the others are fatal."""

from __future__ import annotations


class StudySpecError(ValueError):
    """A study file is invalid. Raised before anything is written to the store."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where


class StudyMismatchError(RuntimeError):
    """A worker's study file differs from the one the study was created with."""


class TrialFailure(Exception):
    """One trial failed for a known reason (nan, oom, build, error); record it and go on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
