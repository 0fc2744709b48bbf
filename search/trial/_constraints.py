"""A study's hard limits (`constraints:` in the study file), watched while a trial trains.

Each quantity is checked as early as it is known: the architecture's parameters before the first
step (a model over `max_params` is never trained), an epoch's seconds at its end (the first epoch
over `max_epoch_seconds` ends the training), the worker's peak memory at each epoch end. The trial
records every limited quantity through Optuna's constraint API (`trial.set_constraint`, value =
observed - limit, feasible when <= 0): TPE and NSGA-II read it and steer away from infeasible
regions, and Optuna's best trial (status, report, evaluate) is the best feasible one.
"""

from __future__ import annotations

import logging
import time

import keras
import optuna

from models import count_params
from search.runtime import accelerator_memory_mib, rss_mib
from search.spec import CONSTRAINTS

logger = logging.getLogger(__name__)


class Infeasible(Exception):
    """A quantity known before training is over its limit: the trial is not trained."""


def architecture_params(model: keras.Model) -> int:
    """Parameters of the architecture inside a training model (not normalisation statistics)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return sum(count_params(m)[0] for m in nested) if nested else count_params(model)[0]


def peak_memory_mib() -> float:
    """The accelerator allocator's peak on a GPU; this process's resident memory on a CPU."""
    gpu = accelerator_memory_mib()
    return gpu[1] if gpu is not None else rss_mib()


class ConstraintWatch(keras.callbacks.Callback):
    """Measures each limited quantity during fit; `violations()` gives them as Optuna's constraints."""

    def __init__(self, limits: dict[str, float]) -> None:
        super().__init__()
        unknown = set(limits) - set(CONSTRAINTS)
        if unknown:
            raise ValueError(f"unknown constraint(s) {sorted(unknown)}; known: {', '.join(CONSTRAINTS)}")
        self.limits = limits
        self.observed: dict[str, float] = {}
        self._started = 0.0

    def on_train_begin(self, logs: dict | None = None) -> None:
        if "max_params" in self.limits:
            self.observed["params"] = float(architecture_params(self.model))
            if self.observed["params"] > self.limits["max_params"]:
                raise Infeasible(f"{self.observed['params']:,.0f} parameters, over max_params "
                                 f"{self.limits['max_params']:,.0f}: not trained")
        self._memory()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self._started
        self.observed["epoch_seconds"] = max(self.observed.get("epoch_seconds", 0.0), seconds)
        self._memory()
        limit = self.limits.get("max_epoch_seconds")
        if limit is not None and seconds > limit:
            logger.warning("epoch %d took %.1fs, over max_epoch_seconds %.1f: training ends, the trial is "
                           "infeasible", epoch + 1, seconds, limit)
            self.model.stop_training = True

    def _memory(self) -> None:
        if "max_peak_memory_mb" in self.limits:
            self.observed["peak_memory_mb"] = max(self.observed.get("peak_memory_mb", 0.0), peak_memory_mib())

    def violations(self) -> dict[str, float]:
        """Each limited quantity measured so far, as observed - limit (feasible when <= 0)."""
        return {CONSTRAINTS[name]: self.observed[CONSTRAINTS[name]] - limit
                for name, limit in self.limits.items() if CONSTRAINTS[name] in self.observed}


def record_constraints(trial: optuna.Trial, watch: ConstraintWatch) -> None:
    for quantity, value in watch.violations().items():
        trial.set_constraint(quantity, value)
