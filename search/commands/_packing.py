"""WORKERS_PER_GPU=auto: how many workers one GPU holds, decided from the memory trials used.

`python -m search run` starts one worker per GPU. Once `MIN_MEASURED` trials recorded their worker's
peak accelerator memory at their end (attrs.WORKER_GPU_PEAK_END_MIB), it packs

    k = min(CPU limit, floor(margin x card memory / (largest peak + CUDA context)))

workers per GPU. A poll that finds a new trial failed as `oom` while k > 1 lowers k by one, and k
never rises above that again (an `oom` with one worker per GPU says nothing about packing).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from optuna.trial import FrozenTrial, TrialState

from search.errors import FailReason
from search.worker import card_memory_mib, cpu_slots, visible_gpus
from storage import attrs

logger = logging.getLogger(__name__)

MARGIN = 0.8  # of the card's memory (nvidia-smi's memory.total) that packed workers may fill
CONTEXT_MIB = 512.0  # the CUDA context of each process, which its allocator does not count
MIN_MEASURED = 2  # trials with a recorded peak before the runner packs


def recommend(peak_mib: float, total_mib: float, *, cpu_limit: int, margin: float = MARGIN,
              context_mib: float = CONTEXT_MIB) -> int:
    """Workers per GPU: as many as fit under `margin` of the card, at most `cpu_limit`, at least 1."""
    if peak_mib < 0 or total_mib <= 0:
        raise ValueError(f"peak_mib must be >= 0 and total_mib > 0 but got {peak_mib} and {total_mib}")
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1] but got {margin}")
    fits = math.floor(margin * total_mib / (peak_mib + context_mib))
    return max(1, min(cpu_limit, fits))


@dataclass(frozen=True)
class GpuBox:
    """What packing needs to know of the machine: its visible GPUs, the smallest card's memory, its cores."""

    gpus: tuple[str, ...]
    total_mib: float
    cores: int

    @classmethod
    def detect(cls, cuda_visible_devices: str | None, *, cores: int | None = None,
               card_mib: Callable[[str], float] = card_memory_mib) -> GpuBox | None:
        """This machine, or None without a GPU (auto packing is then a no-op)."""
        gpus = tuple(visible_gpus(cuda_visible_devices))
        if not gpus:
            return None
        return cls(gpus, min(card_mib(g) for g in gpus), cores or os.cpu_count() or 1)

    @property
    def cpu_limit(self) -> int:
        return cpu_slots(len(self.gpus), self.cores)


def peak_mib(trials: Iterable[FrozenTrial]) -> tuple[float | None, int]:
    """The largest peak recorded at a trial's end, and how many trials recorded one."""
    peaks = [float(t.user_attrs[attrs.WORKER_GPU_PEAK_END_MIB]) for t in trials
             if t.user_attrs.get(attrs.WORKER_GPU_PEAK_END_MIB) is not None]
    return (max(peaks) if peaks else None), len(peaks)


def _oom_trials(trials: Iterable[FrozenTrial]) -> set[int]:
    return {t.number for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(attrs.FAIL_REASON) == FailReason.OOM}


@dataclass
class AutoPacking:
    """The runner's packing decision, updated from the study's trials at every poll."""

    box: GpuBox
    margin: float = MARGIN
    k: int = 1
    ceiling: int | None = None  # set by an oom: k never rises above it again
    seen_oom: set[int] = field(default_factory=set)

    def update(self, trials: list[FrozenTrial]) -> int:
        """k, workers per GPU, after looking at the trials; logs each change and why."""
        new_oom = _oom_trials(trials) - self.seen_oom
        self.seen_oom |= new_oom
        if new_oom and self.k > 1:
            self.ceiling = self.k - 1
            logger.warning("trial(s) %s ran out of GPU memory with %d workers per GPU: packing %d from now on",
                           sorted(new_oom), self.k, self.ceiling)
            self.k = self.ceiling
        peak, measured = peak_mib(trials)
        if peak is None or measured < MIN_MEASURED:
            return self.k
        want = recommend(peak, self.box.total_mib, cpu_limit=self.box.cpu_limit, margin=self.margin)
        want = min(want, self.ceiling or want)
        if want != self.k:
            logger.info("WORKERS_PER_GPU=auto: %d worker(s) per GPU: peak %.0f MiB (+%.0f MiB CUDA context) "
                        "over %d trials, %.0f%% of %.0f MiB, at most %d for %d cores%s", want, peak, CONTEXT_MIB,
                        measured, self.margin * 100, self.box.total_mib, self.box.cpu_limit, self.box.cores,
                        f", at most {self.ceiling} after an oom" if self.ceiling else "")
            self.k = want
        return self.k
