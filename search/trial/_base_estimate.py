"""How long a feature-cache study's one-time base training will take on a CPU, said early.

seed 002's base trains at about 25 images/s on a 2-core CPU: 15 epochs on 45,000 images is a day.
The study does not change with the hardware; the worker times the first batches, and when the
whole training would take longer than `SlowBase.threshold_s` it logs one WARNING paragraph with
the estimate and the faster option (`--profile quick`), then goes on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras

from search.runtime import device
from search.spec import StudySpec, profiles

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlowBase:
    """When to warn: a training estimated over `threshold_s`, timed over `batches` batches (after the
    first, which traces the step function); `clock` is injectable for tests."""

    threshold_s: float = 15 * 60.0
    batches: int = 20
    clock: Callable[[], float] = time.perf_counter


def _duration(seconds: float) -> str:
    if seconds < 2 * 3600:
        return f"about {seconds / 60:.0f} minutes"
    return f"about {seconds / 3600:.1f} hours"


class BaseTimeEstimate(keras.callbacks.Callback):
    """Times the base's first batches and warns once if the training would take long."""

    def __init__(self, spec: StudySpec, n_images: int, slow: SlowBase) -> None:
        super().__init__()
        fc = spec.feature_cache
        self.spec, self.n_images, self.slow = spec, n_images, slow
        self.steps = math.ceil(n_images / fc.base_batch_size)
        self.seen, self.started = 0, 0.0
        self.estimate_s: float | None = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.seen += 1
        if self.seen == 1:
            self.started = self.slow.clock()
        elif self.seen == 1 + self.slow.batches:
            per_batch = (self.slow.clock() - self.started) / self.slow.batches
            self.estimate_s = per_batch * self.steps * self.spec.feature_cache.base_epochs
            if self.estimate_s > self.slow.threshold_s:
                logger.warning(self.advice(per_batch))

    def advice(self, per_batch: float) -> str:
        spec, fc = self.spec, self.spec.feature_cache
        text = (f"{spec.name}: the one-time training of its {fc.base or spec.architecture} base ({fc.base_epochs} "
                f"epochs x {self.steps} batches of {fc.base_batch_size} images, {self.n_images:,} images) will take "
                f"{_duration(self.estimate_s)} on this machine's CPU: no GPU is visible, and its first "
                f"{self.slow.batches} batches took {per_batch:.2f} s each. It runs once; its weights and features "
                f"are then cached for every later run and worker.")
        if spec.profile is not None:
            return f"{text} (Profile {spec.profile} is already applied.) Going on."
        return (f"{text} To search on a CPU sooner, stop now (Ctrl-C) and run `make study NAME={spec.name} "
                f"PROFILE=quick` (python -m search run {spec.name} --profile quick): "
                f"{' '.join(profiles()['quick'].description.split())} That is a different setup, so give it a "
                f"store of its own (e.g. STORAGE=quick.journal) or another study name. Going on with the full base.")


def base_estimate(spec: StudySpec, n_images: int, slow: SlowBase | None) -> list[keras.callbacks.Callback]:
    """The callback for ensure_base's training: `slow` when given, else the defaults when no GPU is visible."""
    if slow is None:
        if device().startswith("gpu"):
            return []
        slow = SlowBase()
    return [BaseTimeEstimate(spec, n_images, slow)]
