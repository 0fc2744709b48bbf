"""A study's hard limits (`constraints:` in the study file), watched while a trial trains.

Each quantity is checked as early as it is known: the architecture's parameters before the first
step (a model over `max_params` is never trained); an epoch's seconds (training and validation) at
its end, from the second epoch of an attempt on, since the first also traces and compiles the train
and validation steps (an attempt of one epoch records it anyway), the first epoch over
`max_epoch_seconds` ending the training; the memory the trial's training holds above what the
worker held as it began (the GPU allocator's bytes in use, or the process's resident set on a CPU),
sampled at each epoch end, never the process's lifetime peak, which an earlier trial may have set. The trial
records every limited quantity through Optuna's constraint API (`trial.set_constraint`, value =
observed - limit, feasible when <= 0): TPE reads it on complete and pruned trials and steers away
from infeasible regions (NSGA-II reads complete trials only), and Optuna's best trial (status,
report, evaluate) is the best feasible one.
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


def memory_in_use_mib() -> float:
    """The accelerator allocator's bytes in use on a GPU; this process's resident memory on a CPU."""
    gpu = accelerator_memory_mib()
    return gpu[0] if gpu is not None else rss_mib()


class ConstraintWatch(keras.callbacks.Callback):
    """Measures each limited quantity during fit; `violations()` gives them as Optuna's constraints.
    `shares`: with fidelity by data, the share of the training set each epoch trains on; an epoch's
    training seconds are divided by it (its validation, on the whole validation split, is not), so that
    epoch_seconds is the pace of an epoch on all of it."""

    def __init__(self, limits: dict[str, float], shares: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.shares = shares
        unknown = set(limits) - set(CONSTRAINTS)
        if unknown:
            raise ValueError(f"unknown constraint(s) {sorted(unknown)}; known: {', '.join(CONSTRAINTS)}")
        self.limits = limits
        self.observed: dict[str, float] = {}
        self._started = 0.0
        self._baseline = 0.0
        self._paced = False  # an epoch after a fit's first has been timed (the first traces the functions)
        self._validating = 0.0  # seconds of this epoch's validation
        self._first_epoch: int | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        if "max_params" in self.limits:
            self.observed["params"] = float(architecture_params(self.model))
            if self.observed["params"] > self.limits["max_params"]:
                raise Infeasible(f"{self.observed['params']:,.0f} parameters, over max_params "
                                 f"{self.limits['max_params']:,.0f}: not trained")
        if "max_peak_memory_mb" in self.limits:
            self._baseline = memory_in_use_mib()
        self._first_epoch = None  # each fit (a fold of data.folds) traces its functions again

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started, self._validating = time.perf_counter(), 0.0

    def on_test_begin(self, logs: dict | None = None) -> None:
        self._test_started = time.perf_counter()

    def on_test_end(self, logs: dict | None = None) -> None:  # fit's validation, inside the epoch
        self._validating += time.perf_counter() - self._test_started

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        share = self.shares[epoch] if epoch < len(self.shares) else 1.0
        seconds = (time.perf_counter() - self._started - self._validating) / share + self._validating
        self._memory()
        if self._first_epoch is None:
            self._first_epoch = epoch  # it compiled the steps: judged only if no other epoch follows
            if not self._paced:
                self.observed["epoch_seconds"] = max(self.observed.get("epoch_seconds", 0.0), seconds)
            return
        if not self._paced:
            self.observed["epoch_seconds"] = seconds  # the first epochs' compile time is not the trial's pace
            self._paced = True
        self.observed["epoch_seconds"] = max(self.observed["epoch_seconds"], seconds)
        limit = self.limits.get("max_epoch_seconds")
        if limit is not None and seconds > limit:
            logger.warning("epoch %d took %.1fs, over max_epoch_seconds %.1f: training ends, the trial is "
                           "infeasible", epoch + 1, seconds, limit)
            self.model.stop_training = True

    def _memory(self) -> None:
        if "max_peak_memory_mb" in self.limits:
            held = max(memory_in_use_mib() - self._baseline, 0.0)
            self.observed["peak_memory_mb"] = max(self.observed.get("peak_memory_mb", 0.0), held)

    def violations(self) -> dict[str, float]:
        """Each limited quantity measured so far, as observed - limit (feasible when <= 0)."""
        return {CONSTRAINTS[name]: self.observed[CONSTRAINTS[name]] - limit
                for name, limit in self.limits.items() if CONSTRAINTS[name] in self.observed}


def record_constraints(trial: optuna.Trial, watch: ConstraintWatch) -> None:
    for quantity, value in watch.violations().items():
        trial.set_constraint(quantity, value)
