"""The objective: one trial = suggest, build, train, record."""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path

import keras
import optuna
from optuna_integration import KerasPruningCallback

from data import Splits
from search._lifecycle import StopFlag, TrialLost, WorkerStopping, lineage, storage_errors, with_retry
from search._runtime import code_version, device
from search._space import suggest, trial_config
from search._spec import StudySpec
from search._train import ModelBuilder, image_model, release, train
from search.errors import TrialFailure

logger = logging.getLogger(__name__)


def _patiently(call, what: str, stop: StopFlag | None):
    """A store call made while a trial trains waits through an outage (backing off) instead of
    failing the trial: a PostgreSQL restart costs a pause, not the epochs trained so far.
    Only a stop request (SIGTERM) during the outage gives up, and the trial is then retried."""
    return with_retry(call, what, stop=None if stop is None else stop.event)


class PatientPruningCallback(KerasPruningCallback):
    """Optuna's Keras pruning callback (report + should_prune each epoch), waiting through store
    outages. Re-reporting a step after a partial failure is harmless: the value is the same."""

    def __init__(self, trial: optuna.Trial, monitor: str, stop: StopFlag | None) -> None:
        super().__init__(trial, monitor)
        self.stop = stop

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        _patiently(lambda: super(PatientPruningCallback, self).on_epoch_end(epoch, logs),
                   f"report epoch {epoch + 1} of trial {self._trial.number}", self.stop)


def _state_in_store(trial: optuna.Trial, stop: StopFlag | None) -> optuna.trial.TrialState:
    """The trial's state as the store has it now (the reaper may have failed it), not as cached."""
    return _patiently(lambda: trial.study._storage.get_trial(trial._trial_id).state,
                      f"check the state of trial {trial.number}", stop)


def _forget(*folders: Path | None) -> None:
    for folder in folders:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _adopt(folder: Path, earlier: list[Path], number: int) -> None:
    """Copy the newest checkpoint of the lineage (`earlier`, newest first) into this attempt's
    folder, then drop the earlier folders. A copy cut short leaves files that ResumableBackup
    cannot read: the retry then starts over, with a warning, as after a kill mid-write."""
    for source in earlier:
        try:
            files = [f for f in source.iterdir() if f.is_file()]
        except OSError:  # never written, or already dropped
            continue
        if not files:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copyfile(f, folder / f.name)
        except OSError as exc:
            logger.warning("trial %d: could not copy the checkpoint in %s (%s); training from scratch",
                           number, source, exc)
            _forget(folder)
        break
    _forget(*earlier)


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, keeping the previous epoch's checkpoint too (`double_checkpoint`),
    and starting from scratch, with a warning, when no checkpoint can be read: a worker killed
    while it wrote one must not make its retry fail."""

    def __init__(self, folder: Path, trial: optuna.Trial, stop: StopFlag | None = None) -> None:
        super().__init__(str(folder), save_freq="epoch", double_checkpoint=True)
        self.folder, self.trial, self.stop = folder, trial, stop

    def on_train_begin(self, logs: dict | None = None) -> None:
        fresh = self.model.get_weights()
        try:
            super().on_train_begin(logs)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means: start over
            logger.warning("trial %d: checkpoint in %s unreadable (%s: %s); training from scratch",
                           self.trial.number, self.folder, type(exc).__name__, str(exc).splitlines()[0][:200])
            self.model.set_weights(fresh)
            self.model._initial_epoch = 0
            _forget(self.folder)
            note = f"{type(exc).__name__}: {exc}"[:300]
            _patiently(lambda: self.trial.set_user_attr("checkpoint_unreadable", note), "record a note", self.stop)


class TrialGuard(keras.callbacks.Callback):
    """At each epoch end: give up if the reaper failed this trial meanwhile (a paused or cut-off
    worker), and, after the checkpoint is written, stop if the worker was asked to."""

    def __init__(self, trial: optuna.Trial, stop: StopFlag | None, *, after_checkpoint: bool) -> None:
        super().__init__()
        self.trial, self.stop, self.after_checkpoint = trial, stop, after_checkpoint

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not self.after_checkpoint and epoch > 0 and not getattr(self, "_seen", False):
            # Keras's BackupAndRestore restored a checkpoint: this trial resumes its lineage.
            _patiently(lambda: self.trial.set_user_attr("resumed_from_epoch", epoch), "record a note", self.stop)
        self._seen = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.after_checkpoint:
            state = _state_in_store(self.trial, self.stop)
            if state != optuna.trial.TrialState.RUNNING:
                raise TrialLost(f"trial {self.trial.number} is {state.name} in the store (failed by the reaper "
                                f"while this worker was paused or cut off)")
        elif self.stop is not None and self.stop.is_set():
            raise WorkerStopping(f"stopped after epoch {epoch + 1}, checkpoint written")


class Objective:
    def __init__(self, spec: StudySpec, splits: Splits, *, worker: str = "",
                 make_model: ModelBuilder | None = None, stop: StopFlag | None = None,
                 checkpoint_root: Path | None = None, image_shape: tuple[int, ...] | None = None) -> None:
        self.spec = spec
        self.splits = splits
        # Trials on cached features still describe the image model they stand for.
        self.image_shape = image_shape or splits.input_shape
        self.stop = stop
        self.checkpoint_root = checkpoint_root
        self.make_model = make_model or image_model(spec.normalization)
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.static_attrs = {
            "dataset_fingerprint": splits.fingerprint,
            "space_hash": spec.space_hash(),
            "code_version": code_version(),
            "backend": keras.backend.backend(),
            "device": device(),
            "worker": self.worker,
        }

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        def store(call, what: str):
            return _patiently(call, f"{what} (trial {trial.number})", self.stop)

        store(lambda: [trial.set_user_attr(k, v) for k, v in self.static_attrs.items()], "record the worker")
        values = store(lambda: suggest(trial, self.spec), "sample parameters")  # idempotent: kept params are reused
        cfg = trial_config(self.spec, values, input_shape=self.image_shape, num_classes=self.splits.num_classes)
        multi = self.spec.second_objective is not None
        callbacks = [TrialGuard(trial, self.stop, after_checkpoint=False)]
        callbacks += [] if multi else [PatientPruningCallback(trial, "val_accuracy", self.stop)]
        folder, lineage_folders = None, []
        if self.checkpoint_root is not None:
            # Each attempt checkpoints into a folder of its own; only a retry of a failed trial (same
            # lineage, same parameters) starts from a copy of its predecessor's. A predecessor's worker
            # that was paused, not dead, may still be writing its folder when it wakes up (it notices
            # it lost its trial only at the next epoch end); a shared folder let that write clash with
            # the retry's restore (CI: HDF5's lock refused the read, and the retry started over).
            frozen = store(lambda: trial.study._storage.get_trial(trial._trial_id), "read the lineage")
            origin = lineage(frozen)
            uid = store(lambda: trial.study.user_attrs.get("uid", "nouid"), "read the study")
            folder = self.checkpoint_root / f"{self.spec.name}-{uid}-{trial.number}"
            _forget(folder)  # stale files of an older study of this name
            earlier = [self.checkpoint_root / f"{self.spec.name}-{uid}-{n}"
                       for n in reversed(frozen.system_attrs.get("retry_history", []))]  # newest first
            lineage_folders = [folder, *earlier]
            if origin != trial.number:
                # fail_reason/fail_message are inherited from the failed original: cleared
                store(lambda: [trial.set_user_attr(k, v) for k, v in
                               (("retry_of", origin), ("fail_reason", None), ("fail_message", None))], "mark the retry")
                _adopt(folder, earlier, trial.number)
            callbacks.append(ResumableBackup(folder, trial, self.stop))
        callbacks.append(TrialGuard(trial, self.stop, after_checkpoint=True))
        try:
            result, _ = train(cfg, self.splits, max_epochs=self.spec.max_epochs, patience=self.spec.patience,
                              seed=self.spec.seed + trial.number, label=f"[{self.worker}] trial {trial.number}",
                              callbacks=callbacks, make_model=self.make_model)
        except (WorkerStopping, TrialLost, *storage_errors()):
            raise  # the checkpoint stays: this trial's retry resumes from it
        except TrialFailure as failure:
            # Recorded first: if the reaper failed this trial meanwhile, the store refuses
            # (UpdateFinishedTrialError) and the checkpoint stays for the retry.
            store(lambda: (trial.set_user_attr("fail_reason", failure.reason),
                           trial.set_user_attr("fail_message", failure.message[:500])), "record the failure")
            _forget(*lineage_folders)
            logger.warning("trial %d failed (%s): %s", trial.number, failure.reason, failure.message)
            raise
        except optuna.TrialPruned:
            _forget(*lineage_folders)
            raise
        except Exception as exc:
            state = _state_in_store(trial, self.stop)
            if state != optuna.trial.TrialState.RUNNING:
                # A worker paused past the grace period woke up mid-save or mid-epoch: whatever broke
                # (its folder removed under it, say) is not the trial's doing, and the retry owns it.
                raise TrialLost(f"trial {trial.number} is {state.name} in the store (failed by the reaper while "
                                f"this worker was paused or cut off); here it raised {type(exc).__name__}: "
                                f"{str(exc)[:200]}") from exc
            _forget(*lineage_folders)  # failed for good: nothing will resume it
            raise
        except BaseException:
            _forget(*lineage_folders)
            raise
        finally:
            release()
        _forget(*lineage_folders)
        attrs = {key: getattr(result, key) for key in ("epochs_run", "best_epoch", "n_params", "train_seconds",
                                                          "images_per_s")}
        attrs["val_accuracy_curve"] = [round(a, 5) for a in result.curve]
        store(lambda: [trial.set_user_attr(k, v) for k, v in attrs.items()], "record the result")
        if not multi:
            return result.best_val_accuracy
        second = result.n_params if self.spec.second_objective == "params" else result.train_seconds
        return result.best_val_accuracy, float(second)
