"""The objective: one trial = suggest, build, train, record.

Every store call below is plain Optuna; the study's storage is the resilient store, which waits
through outages, so a PostgreSQL restart costs a trial a pause, not the epochs trained so far.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import statistics
from collections.abc import Sequence
from typing import Any

import keras
import optuna
from optuna_integration import KerasPruningCallback

from data import Splits
from models import count_params
from search.errors import TrialFailure, TrialLost, WorkerStopping
from search.runtime import code_version, device
from search.spec import (
    FINE_TUNE_PREFIX,
    PRUNERS,
    StudySpec,
    TrialConfig,
    split_fine_tune,
    suggest,
    suggest_fine_tune,
    trial_config,
)
from search.study import fine_tuning, fresh_trial, store_seconds, wanted
from search.trial._checkpoints import Checkpoints, ResumableBackup, StopRequest
from search.trial._constraints import ConstraintWatch, Infeasible, record_constraints
from search.trial._fine_tune import FineTuning, StagePruning, trained_head
from search.trial._pareto_pruning import FirstObjectivePruning
from search.trial._timing import PhaseCallback, TrialTimer, timed_builder
from search.trial._train import FitOptions, ModelBuilder, TrainResult, image_model, release, train
from storage import attrs

logger = logging.getLogger(__name__)


class TrialGuard(keras.callbacks.Callback):
    """At the first epoch's start, record the trial's steps per call (and whether it resumed a
    checkpoint). At each epoch end: give up if the reaper failed this trial meanwhile (a paused or cut-off
    worker), and, after the checkpoint's turn, stop if the worker was asked to, making sure this
    epoch's checkpoint is written (the signal may have come just after the checkpoint's turn)."""

    def __init__(self, trial: optuna.Trial, stop: StopRequest | None, *, after_checkpoint: bool,
                 checkpoint: ResumableBackup | None = None) -> None:
        super().__init__()
        self.trial, self.stop, self.after_checkpoint, self.checkpoint = trial, stop, after_checkpoint, checkpoint
        self._seen = False
        self.first_epoch = 0  # where fit started: after a restored checkpoint, the epoch it resumed at

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not self._seen:
            self.first_epoch = epoch
        if not self.after_checkpoint and not self._seen:
            # How it trains, on every trial however it ends (pruned and failed ones too).
            self.trial.set_user_attr(attrs.STEPS_PER_EXECUTION, self.model.steps_per_execution)
            if epoch > 0:  # Keras's BackupAndRestore restored a checkpoint: this trial resumes its lineage.
                self.trial.set_user_attr(attrs.RESUMED_FROM_EPOCH, epoch)
        self._seen = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.after_checkpoint:
            state = fresh_trial(self.trial).state
            if state != optuna.trial.TrialState.RUNNING:
                raise TrialLost(f"trial {self.trial.number} is {state.name} in the store (failed by the reaper "
                                f"while this worker was paused or cut off)")
        elif self.stop is not None and self.stop.is_set():
            if self.checkpoint is None:  # a fold after the first of data.folds, or checkpoints off
                raise WorkerStopping(f"stopped after epoch {epoch + 1}; no checkpoint is kept for this training")
            self.checkpoint.save(epoch, logs)  # already written unless the signal came just now
            raise WorkerStopping(f"stopped after epoch {epoch + 1}, checkpoint written")


def result_attrs(result: TrainResult) -> dict[str, Any]:
    values = {key: getattr(result, key) for key in attrs.RESULT_ATTRS}
    return {**values, attrs.VAL_ACCURACY_CURVE: [round(a, 5) for a in result.curve]}


def record(trial: optuna.Trial, values: dict[str, Any]) -> None:
    for key, value in values.items():
        trial.set_user_attr(key, value)


def record_breakdown(trial: optuna.Trial, timer: TrialTimer) -> None:
    """The trial's seconds per phase (attrs.TIME_BREAKDOWN), however it ended, unless it is no longer ours."""
    try:
        trial.set_user_attr(attrs.TIME_BREAKDOWN, timer.breakdown())
    except optuna.exceptions.UpdateFinishedTrialError:
        logger.debug("trial %d: finished elsewhere; its time breakdown is dropped", trial.number)


class Objective:
    def __init__(self, spec: StudySpec, splits: Splits, *, fit: FitOptions | None = None,
                 checkpoints: Checkpoints | None = None, make_model: ModelBuilder | None = None,
                 stop: StopRequest | None = None, worker: str = "", image_shape: tuple[int, ...] | None = None,
                 other_folds: Sequence[Splits] = (), confirming: bool = False,
                 fine_tuning: FineTuning | None = None) -> None:
        """fit: how every trial fits (default: the study's, STEPS_PER_EXECUTION=auto); checkpoints: where
        attempts checkpoint (None: not at all); image_shape: what trials on cached features stand for;
        other_folds: with `data.folds`, the folds after the first (`splits`), trained on once a trial
        survives the first; confirming: the trials of the confirmation stage (search.study._confirm),
        never pruned nor cut short by a constraint (each was a feasible search trial), and only the
        confirmations the last evaluate asked for; fine_tuning: a study with `fine_tune:`, whose
        fine-tuning trials (and their confirmations) train the whole model (search.trial._fine_tune)."""
        self.spec, self.splits, self.stop, self.checkpoints = spec, splits, stop, checkpoints
        self.other_folds, self.confirming, self.fine_tuning = tuple(other_folds), confirming, fine_tuning
        self.fit = fit or FitOptions.for_study(spec, steps="auto")
        # Trials on cached features still describe the image model they stand for.
        self.image_shape = image_shape or splits.input_shape
        self.make_model = make_model or image_model(spec.normalization)
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.static_attrs = {
            attrs.DATASET_FINGERPRINT: splits.fingerprint, attrs.SPACE_HASH: spec.space_hash(),
            attrs.CODE_VERSION: code_version(), attrs.BACKEND: keras.backend.backend(), attrs.DEVICE: device(),
            attrs.WORKER: self.worker, attrs.PRECISION: spec.precision, attrs.JIT_COMPILE: spec.jit_compile,
        }

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        # Idle from the trial's start in the store; the training thread's store calls counted apart.
        timer = TrialTimer.since(trial.datetime_start, store_clock=store_seconds)
        try:
            return self._run(trial, timer)
        finally:
            record_breakdown(trial, timer)  # the last write: the breakdown covers all but the tell

    def _run(self, trial: optuna.Trial, timer: TrialTimer) -> float | tuple[float, float]:
        record(trial, self.static_attrs)
        if self.confirming:
            self._check_wanted(trial)
        values = suggest(trial, self.spec)  # idempotent: a retry's kept params are reused
        knobs = suggest_fine_tune(trial, self.spec) if self._fine_tunes(trial) else {}
        cfg = trial_config(self.spec, values, input_shape=self.image_shape, num_classes=self.splits.num_classes)
        # First: a model over max_params is not trained. A fine-tuning trial (its head was feasible) is
        # not held to limits set for heads: its model is the base and the head, on images.
        watch = ConstraintWatch({} if self.confirming or knobs else self.spec.constraints,
                                shares=() if knobs else self.fit.data_fractions)
        guard = TrialGuard(trial, self.stop, after_checkpoint=False)
        callbacks: list[keras.callbacks.Callback] = [watch, PhaseCallback(timer), guard]
        if knobs and not self.confirming:  # the median rule among the fine-tuning trials (search.study._fine_tune)
            callbacks.append(StagePruning(trial, self.fit.metric, prune=self.spec.pruner != "none"))
        elif not self.confirming and self.spec.second_objective is None:
            callbacks.append(KerasPruningCallback(trial, self.fit.metric))
        elif not self.confirming and self.spec.pruner == "median":
            options = {**PRUNERS["median"].defaults, **self.spec.pruner_options}
            callbacks.append(FirstObjectivePruning(trial, self.fit.metric, minimize=self.fit.mode == "min",
                                                   n_startup_trials=options["n_startup_trials"],
                                                   n_warmup_steps=options["n_warmup_steps"]))
        fit = functools.partial(self._fine_tune, knobs=split_fine_tune(knobs)[1]) if knobs else self._train
        try:
            if self.checkpoints is None:
                result = fit(trial, cfg, callbacks, timer)
            else:
                with self.checkpoints.attempt(trial, stop=self.stop, timer=timer) as backup:
                    result = fit(trial, cfg, [*callbacks, backup], timer, backup)
            # A resumed fit's history starts at the checkpoint's epoch: its best epoch counted from the start.
            result = dataclasses.replace(result, best_epoch=result.best_epoch + guard.first_epoch)
            folds = [result, *self._other_folds(trial, cfg, watch, timer)]
        except Infeasible as why:
            record_constraints(trial, watch)
            record(trial, {attrs.INFEASIBLE: str(why)})
            logger.info("trial %d is infeasible: %s", trial.number, why)
            raise optuna.TrialPruned(str(why)) from None
        except optuna.TrialPruned:
            record_constraints(trial, watch)  # a pruned trial is a sampler's evidence too, feasible or not
            raise
        finally:
            timer.switch("cleanup")
            release()
        record_constraints(trial, watch)
        record(trial, result_attrs(result))
        if self.other_folds:
            record(trial, {attrs.FOLD_VALUES: [r.best_value for r in folds],
                           attrs.FOLD_BEST_EPOCHS: [r.best_epoch for r in folds]})
        return self._value(result, statistics.fmean(r.best_value for r in folds))

    def _other_folds(self, trial: optuna.Trial, cfg: TrialConfig, watch: ConstraintWatch,
                     timer: TrialTimer) -> list[TrainResult]:
        """The folds after the first, for a trial that survived the first's pruning: not pruned (the
        pruner compares trials on the first fold's curve) nor checkpointed: a worker stopped during
        them loses them, and its retry trains every fold again (the first fold's checkpoint is
        dropped when that fold ends)."""
        results = []
        for i, fold in enumerate(self.other_folds, start=2):
            logger.info("trial %d: fold %d of %d", trial.number, i, len(self.other_folds) + 1)
            callbacks = [watch, PhaseCallback(timer), TrialGuard(trial, self.stop, after_checkpoint=False)]
            results.append(self._train(trial, cfg, callbacks, timer, splits=fold))
        return results

    def _fine_tune(self, trial: optuna.Trial, cfg: TrialConfig, callbacks: list[keras.callbacks.Callback],
                   timer: TrialTimer, backup: ResumableBackup | None = None, *, knobs: dict) -> TrainResult:
        """A fine-tuning trial: its head again on the cached features (neither pruned nor checkpointed:
        seconds; a stop during it retries the trial), then the whole model, pruned and checkpointed."""
        if self.fine_tuning is None:
            raise RuntimeError("a fine-tuning trial reached a worker prepared without the study's fine_tune")
        head_callbacks = [PhaseCallback(timer), TrialGuard(trial, self.stop, after_checkpoint=True)]
        # The promoted trial's seed: its head trained again as it was (a confirmation keeps its own seed).
        promoted = trial.user_attrs.get(attrs.PROMOTED_FROM)
        seed = self.spec.seed + promoted if promoted is not None and not self.confirming else self.seed(trial)
        head, model = self._fit(trial, cfg, head_callbacks, timer, label="head", seed=seed)
        record(trial, {attrs.FINE_TUNE_HEAD_VALUE: head.best_value})
        ft_cfg, ft_fit, make = self.fine_tuning.plan(cfg, knobs, trained_head(model), self.fit)
        callbacks.append(TrialGuard(trial, self.stop, after_checkpoint=True, checkpoint=backup))
        result, tuned = self._fit(trial, ft_cfg, callbacks, timer, splits=self.fine_tuning.images, fit=ft_fit,
                                  make_model=make, label="fine-tune")
        record(trial, {attrs.FINE_TUNE_TRAINABLE: count_params(tuned)[1]})
        return result

    def _fine_tunes(self, trial: optuna.Trial) -> bool:
        """A fine-tuning trial, or a confirmation of one (its queued params hold the fine-tuning knobs)."""
        if self.spec.fine_tune is None:
            return False
        return fine_tuning(trial) or any(k.startswith(FINE_TUNE_PREFIX)
                                         for k in fresh_trial(trial).system_attrs.get(attrs.FIXED_PARAMS) or {})

    def _train(self, trial: optuna.Trial, cfg: TrialConfig, callbacks: list[keras.callbacks.Callback], timer: TrialTimer,
               backup: ResumableBackup | None = None, splits: Splits | None = None) -> TrainResult:
        # After the checkpoint's turn at each epoch end.
        callbacks.append(TrialGuard(trial, self.stop, after_checkpoint=True, checkpoint=backup))
        return self._fit(trial, cfg, callbacks, timer, splits=splits)[0]

    def _fit(self, trial: optuna.Trial, cfg: TrialConfig, callbacks: list[keras.callbacks.Callback], timer: TrialTimer,
             *, splits: Splits | None = None, fit: FitOptions | None = None, make_model: ModelBuilder | None = None,
             label: str = "", seed: int | None = None) -> tuple[TrainResult, keras.Model]:
        try:
            result, model = train(cfg, splits or self.splits, fit or self.fit,
                                  seed=self.seed(trial) if seed is None else seed,
                                  label=f"[{self.worker}] trial {trial.number}{f' {label}' if label else ''}",
                                  callbacks=callbacks, make_model=timed_builder(make_model or self.make_model, timer))
        except TrialFailure as failure:
            # Recorded before the checkpoint is dropped: if the reaper failed this trial meanwhile,
            # the store refuses (TrialTakenOver) and the checkpoint stays for the retry.
            record(trial, {attrs.FAIL_REASON: failure.reason.value, attrs.FAIL_MESSAGE: failure.message[:500]})
            logger.warning("trial %d failed (%s): %s", trial.number, failure.reason, failure.message)
            raise
        return result, model

    def _check_wanted(self, trial: optuna.Trial) -> None:
        """A confirmation the last evaluate did not ask for (queued by an earlier one), or a trial the
        stage's sampler made when two workers raced for the last queued one, is not trained."""
        why = ("a trial of the confirmation stage that confirms nothing" if attrs.CONFIRM_SEED not in trial.user_attrs
               else None if wanted(trial.study, trial) else "a confirmation the last evaluate did not ask for")
        if why:
            record(trial, {attrs.INFEASIBLE: why})
            raise optuna.TrialPruned(why)

    def seed(self, trial: optuna.Trial) -> int:
        """A search trial's seed follows its number; a confirmation's is the one it confirms with."""
        confirm_seed = trial.user_attrs.get(attrs.CONFIRM_SEED)
        return self.spec.seed + trial.number if confirm_seed is None else int(confirm_seed)

    def _value(self, result: TrainResult, value: float) -> float | tuple[float, float]:
        """value: the first fold's best value, or the mean over the folds."""
        if self.spec.second_objective is None:
            return value
        second = result.n_params if self.spec.second_objective == "params" else result.train_seconds
        return value, float(second)
