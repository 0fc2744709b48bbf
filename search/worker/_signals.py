"""SIGTERM/SIGINT as a flag the trial checks at each epoch end (search.trial.StopRequest)."""

from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger(__name__)


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
