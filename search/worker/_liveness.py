"""The worker's two background threads: heartbeats for its current trial, and the reaper.

What the reaper does to a silent trial (fail it, queue its retry) is search.study._retries; this
module only decides when, on its own threads, which survive any one store error.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import optuna

from search.settings import Settings
from search.study import Reaper, storage_of, trial_id
from storage import attrs

logger = logging.getLogger(__name__)
Clock = Callable[[], float]
DEFAULTS = Settings.model_fields  # the defaults are written once, in Settings
WARN_EVERY_S = 60.0


@dataclass(frozen=True)
class Liveness:
    """Heartbeat interval, grace period and the retry cap of silent lineages (from Settings).

    A trial whose worker went silent may itself be the cause (the kernel's OOM killer, a crash in
    native code), so a lineage is retried after at most `max_stale_retries` such failures. A
    SIGTERM or a store outage is never the trial's doing: those are retried without limit."""

    interval: float = DEFAULTS["heartbeat_interval"].default
    grace: float = DEFAULTS["grace_period"].default
    max_stale_retries: int = DEFAULTS["max_stale_retries"].default
    settle: float = 0.0  # after an outage, seconds more before a trial is judged (STORE_MAX_BACKOFF)

    @classmethod
    def from_settings(cls, settings: Settings) -> Liveness:
        return cls(settings.heartbeat_interval, settings.grace_period, settings.max_stale_retries,
                   settle=settings.store_max_backoff)

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.grace <= 0:
            raise ValueError(f"heartbeat interval and grace period must be positive but got "
                             f"{self.interval} and {self.grace}")


class Background:
    """The worker's two threads: heartbeats for its current trial, and the reaper.

    A heartbeat is this process's clock as it beats; reapers read it only as a token that changes
    (search.study.Reaper), so that clock needs to agree with no other machine's. `clock` is
    injectable so tests can drive it without sleeping."""

    def __init__(self, study: optuna.Study, liveness: Liveness, *, clock: Clock = time.time) -> None:
        self.study, self.liveness, self.clock = study, liveness, clock
        self.reaper = Reaper(liveness.grace, liveness.max_stale_retries, settle=liveness.settle)
        self.trial_id: int | None = None
        self.stopped = threading.Event()
        self._warned_at: dict[str, float] = {}  # what -> when its failure was last logged as a warning
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
        return self.reaper(self.study)

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

    def _guarded(self, call: Callable[[], object], what: str) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - a background thread must outlive any one error
            # A warning at most once a minute per thread (an outage fails every beat); debug in between.
            now = time.monotonic()
            if now - self._warned_at.get(what, -WARN_EVERY_S) >= WARN_EVERY_S:
                self._warned_at[what] = now
                logger.warning("%s failed (%s: %s); it goes on, and tries again", what, type(exc).__name__,
                               str(exc)[:300])
            else:
                logger.debug("%s failed: %s", what, exc)
