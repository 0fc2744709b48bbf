"""Where a trial's time goes: one clock, exclusive phases, and the Keras callback that switches them.

A trial is always in exactly one phase (storage.attrs.TIME_PHASES); switching phase adds the time
since the last switch to the phase left. Store round trips made by the training thread meanwhile
(the resilient store counts them per thread, `search.study._store.store_seconds`) are moved from that
phase to "store". The phases therefore add up to the trial's wall time, by construction.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import keras

from storage import attrs

if TYPE_CHECKING:
    from data import Splits
    from search.spec import TrialConfig
    from search.trial._train import ModelBuilder


def _no_store() -> float:
    return 0.0


class TrialTimer:
    """Seconds per phase of one trial. `clock` and `store_clock` (seconds this thread has spent in
    store calls so far) are injected; the timer starts in phase "idle"."""

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter,
                 store_clock: Callable[[], float] = _no_store, idle_before: float = 0.0) -> None:
        if idle_before < 0:
            raise ValueError(f"idle_before cannot be negative but got {idle_before}")
        self._clock, self._store_clock = clock, store_clock
        self.seconds = dict.fromkeys(attrs.TIME_PHASES, 0.0)
        self.seconds["idle"] = idle_before
        self.current = "idle"
        self._since, self._store_since = clock(), store_clock()

    @classmethod
    def since(cls, started: datetime.datetime | None, **kwargs: Callable[[], float]) -> TrialTimer:
        """A timer whose idle phase began at `started` (the trial's datetime_start, the store's clock)."""
        idle = 0.0 if started is None else (datetime.datetime.now() - started).total_seconds()
        return cls(idle_before=max(0.0, idle), **kwargs)

    def switch(self, phase: str) -> str:
        """Enter `phase`; returns the phase left."""
        if phase not in self.seconds:
            raise ValueError(f"unknown phase {phase!r}; known: {', '.join(self.seconds)}")
        now, store = self._clock(), self._store_clock()
        in_store = store - self._store_since
        self.seconds[self.current] += max(0.0, now - self._since - in_store)
        self.seconds["store"] += in_store
        left, self.current, self._since, self._store_since = self.current, phase, now, store
        return left

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """`name` for the block, then back to the phase it interrupted."""
        left = self.switch(name)
        try:
            yield
        finally:
            self.switch(left)

    def now(self) -> float:
        """The timer's clock."""
        return self._clock()

    def move(self, seconds: float, source: str, target: str) -> None:
        """Count up to `seconds` already counted in `source` (a phase left) in `target` instead: an
        estimate made after the fact (PhaseCallback, the first call of several steps)."""
        moved = min(max(seconds, 0.0), self.seconds[source])
        self.seconds[source] -= moved
        self.seconds[target] += moved

    def breakdown(self) -> dict[str, float]:
        """Seconds per phase so far (the current phase counted up to now), rounded to milliseconds."""
        self.switch(self.current)
        return {name: round(seconds, 3) for name, seconds in self.seconds.items()}


class PhaseCallback(keras.callbacks.Callback):
    """Switches the timer as fit() goes: compile until the first call into the train function returns
    (its first step traced, and compiled by XLA where it is on), then train, validate between
    on_test_begin and on_test_end, cleanup once fit ends. Put it first in the callback list, so its
    switches come before the other callbacks' work.

    With several steps a call (STEPS_PER_EXECUTION) that first call also trained the steps after its
    first: once a later call has shown the pace of a step, their estimated time moves from compile to
    train. (If no later call comes, as in a one-epoch trial of a single call, it stays in compile.)"""

    def __init__(self, timer: TrialTimer) -> None:
        super().__init__()
        self.timer = timer
        self._stepped = False
        self._extra = 0  # steps of the first call after its first, still counted in compile
        self._begin = (0.0, 0)  # the current call's start on the timer's clock, and its first step

    def _steps(self, begin: int, end: int) -> int:
        """Steps a call ran: Keras passes end = begin + steps_per_execution - 1 even for an epoch's
        last, shorter call; the epoch's step count (params["steps"]) bounds it."""
        total = (self.params or {}).get("steps")
        return (min(end, total - 1) if total else end) - begin + 1

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._begin = (self.timer.now(), batch)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        steps = self._steps(self._begin[1], batch)
        if not self._stepped:  # the first call: tracing (and XLA compilation) done
            self._stepped = True
            self.timer.switch("train")
            self._extra = steps - 1
        elif self._extra and steps > 0:
            per_step = (self.timer.now() - self._begin[0]) / steps
            self.timer.move(self._extra * per_step, "compile", "train")
            self._extra = 0

    def on_test_begin(self, logs: dict | None = None) -> None:
        self.timer.switch("validate")

    def on_test_end(self, logs: dict | None = None) -> None:
        self.timer.switch("train")

    def on_train_end(self, logs: dict | None = None) -> None:
        self.timer.switch("cleanup")


def timed_builder(make_model: ModelBuilder, timer: TrialTimer) -> ModelBuilder:
    """`make_model`, timed as "build"; what follows it in train() (compile, fit's first step) is "compile"."""

    def make(cfg: TrialConfig, splits: Splits, seed: int) -> keras.Model:
        timer.switch("build")
        try:
            return make_model(cfg, splits, seed)
        finally:
            timer.switch("compile")

    return make
