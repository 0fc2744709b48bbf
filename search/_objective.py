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
from search._lifecycle import StopFlag, TrialLost, WorkerStopping, lineage, storage_errors
from search._runtime import code_version, device
from search._space import suggest, trial_config
from search._spec import StudySpec
from search._train import ModelBuilder, image_model, release, train
from search.errors import TrialFailure

logger = logging.getLogger(__name__)


def _forget(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, keeping the previous epoch's checkpoint too (`double_checkpoint`),
    and starting from scratch, with a warning, when no checkpoint can be read: a worker killed
    while it wrote one must not make its retry fail."""

    def __init__(self, folder: Path, trial: optuna.Trial) -> None:
        super().__init__(str(folder), save_freq="epoch", double_checkpoint=True)
        self.folder, self.trial = folder, trial

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
            self.trial.set_user_attr("checkpoint_unreadable", f"{type(exc).__name__}: {exc}"[:300])


class TrialGuard(keras.callbacks.Callback):
    """At each epoch end: give up if the reaper failed this trial meanwhile (a paused or cut-off
    worker), and, after the checkpoint is written, stop if the worker was asked to."""

    def __init__(self, trial: optuna.Trial, stop: StopFlag | None, *, after_checkpoint: bool) -> None:
        super().__init__()
        self.trial, self.stop, self.after_checkpoint = trial, stop, after_checkpoint

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not self.after_checkpoint and epoch > 0 and not getattr(self, "_seen", False):
            # Keras's BackupAndRestore restored a checkpoint: this trial resumes its lineage.
            self.trial.set_user_attr("resumed_from_epoch", epoch)
        self._seen = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.after_checkpoint:
            state = self.trial.study._storage.get_trial(self.trial._trial_id).state
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
        for key, value in self.static_attrs.items():
            trial.set_user_attr(key, value)
        values = suggest(trial, self.spec)
        cfg = trial_config(self.spec, values, input_shape=self.image_shape, num_classes=self.splits.num_classes)
        multi = self.spec.second_objective is not None
        callbacks = [TrialGuard(trial, self.stop, after_checkpoint=False)]
        callbacks += [] if multi else [KerasPruningCallback(trial, "val_accuracy")]
        folder = None
        if self.checkpoint_root is not None:
            # Only a retry of a failed trial (same lineage, same parameters) resumes from its checkpoint.
            origin = lineage(trial.study._storage.get_trial(trial._trial_id))
            folder = self.checkpoint_root / f"{self.spec.name}-{trial.study.user_attrs.get('uid', 'nouid')}-{origin}"
            if origin != trial.number:
                trial.set_user_attr("retry_of", origin)
                for key in ("fail_reason", "fail_message"):  # inherited from the failed original
                    trial.set_user_attr(key, None)
            else:
                _forget(folder)  # a first attempt never resumes (stale files of an older study)
            callbacks.append(ResumableBackup(folder, trial))
        callbacks.append(TrialGuard(trial, self.stop, after_checkpoint=True))
        try:
            result, _ = train(cfg, self.splits, max_epochs=self.spec.max_epochs, patience=self.spec.patience,
                              seed=self.spec.seed + trial.number, label=f"[{self.worker}] trial {trial.number}",
                              callbacks=callbacks, make_model=self.make_model)
        except (WorkerStopping, TrialLost, *storage_errors()):
            raise  # the checkpoint stays: this trial's retry resumes from it
        except TrialFailure as failure:
            _forget(folder)
            trial.set_user_attr("fail_reason", failure.reason)
            trial.set_user_attr("fail_message", failure.message[:500])
            logger.warning("trial %d failed (%s): %s", trial.number, failure.reason, failure.message)
            raise
        except BaseException:  # pruned, or failed for good: nothing will resume it
            _forget(folder)
            raise
        finally:
            release()
        _forget(folder)
        for key in ("epochs_run", "best_epoch", "n_params", "train_seconds", "images_per_s"):
            trial.set_user_attr(key, getattr(result, key))
        trial.set_user_attr("val_accuracy_curve", [round(a, 5) for a in result.curve])
        if not multi:
            return result.best_val_accuracy
        second = result.n_params if self.spec.second_objective == "params" else result.train_seconds
        return result.best_val_accuracy, float(second)
