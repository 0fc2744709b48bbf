"""Epoch checkpoints, one folder per attempt, so a retried trial resumes where its lineage stopped.

Each attempt checkpoints into `<root>/<study>-<uid>-<trial number>`; only a retry of a failed
trial (same lineage, same parameters) starts from a copy of its predecessor's newest checkpoint.
A predecessor's worker that was paused, not dead, may still be writing its folder when it wakes up
(it notices it lost its trial only at the next epoch end); a shared folder let that write clash
with the retry's restore (CI: HDF5's lock refused the read, and the retry started over).

With object storage (ARTIFACTS_URL) the folder is this machine's, and each checkpoint written is
also uploaded to `<prefix>/checkpoints/<attempt folder>/` (the weights, then the epoch they are
of): a retry on another machine downloads its predecessor's newest checkpoint from there.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import keras
import optuna

from search.errors import FATAL, TrialLost, WorkerStopping
from search.settings import Settings
from search.study import fresh_trial, lineage, restart_from_epoch
from search.trial._timing import TrialTimer
from storage import ObjectStore, attrs


class StopRequest(Protocol):
    """What a trial sees of the worker's stop signal (search.worker's StopFlag): asked at each epoch end."""

    def is_set(self) -> bool: ...


logger = logging.getLogger(__name__)

EVERY_S: float = Settings.model_fields["checkpoint_every_s"].default

# The trial may be resumed from its checkpoint: keep the folder. A fatal error hands the trial to a
# healthy worker, and a second signal (SystemExit) leaves it to be reaped and retried.
_KEEP = (WorkerStopping, TrialLost, optuna.exceptions.UpdateFinishedTrialError, *FATAL, SystemExit, KeyboardInterrupt)


# What a checkpoint is in object storage: Keras's BackupAndRestore files, the weights first. The
# folder's .bkp copies guard a local write cut short; an upload is whole or absent, so none is kept.
REMOTE_FILES = ("latest.weights.h5", "training_metadata.json")


def forget(*folders: Path | None, remote: ObjectStore | None = None) -> None:
    for folder in folders:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
            if remote is not None:
                _quietly(remote.delete_under, folder.name)


def _quietly(call: Callable, *args) -> None:
    """A clean-up call to object storage: its failure leaves an orphaned checkpoint, not a failed trial."""
    try:
        call(*args)
    except Exception as exc:  # noqa: BLE001 - botocore's errors and OSError alike
        logger.warning("object storage clean-up %s%s failed: %s", getattr(call, "__name__", call), args, exc)


def _copy_local(source: Path, folder: Path) -> bool:
    try:
        files = [f for f in source.iterdir() if f.is_file()]
    except OSError:  # never written, or already dropped
        return False
    if not files:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, folder / f.name)
    return True


def _copy_remote(remote: ObjectStore, source: Path, folder: Path) -> bool:
    """`source`'s checkpoint from the bucket, when it is whole there: both files (the epoch's file is
    uploaded last, so weights without it are a checkpoint whose upload was cut short)."""
    present = set(remote.names(source.name))
    if not all(f"{source.name}/{name}" in present for name in REMOTE_FILES):
        return False
    for name in REMOTE_FILES:
        remote.download(f"{source.name}/{name}", folder / name)
    return True


def _push(remote: ObjectStore, folder: Path) -> None:
    """This attempt's checkpoint to the bucket: the weights, then the epoch they are of."""
    for name in REMOTE_FILES:
        if (folder / name).is_file():
            remote.upload(folder / name, f"{folder.name}/{name}")


def adopt(folder: Path, earlier: list[Path], number: int, *, remote: ObjectStore | None = None) -> None:
    """Copy the newest checkpoint of the lineage (`earlier`, newest first) into this attempt's
    folder, from this machine's folder or else from object storage, then drop the earlier folders.
    With object storage the copy is uploaded under this attempt before the earlier attempts' objects
    are deleted, so a retry killed before its own first checkpoint leaves the lineage's newest one in
    the bucket. A copy cut short leaves files that ResumableBackup cannot read: the retry then starts
    over, with a warning, as after a kill mid-write; a copy that failed deletes nothing from the bucket."""
    for source in earlier:
        try:
            if _copy_local(source, folder):
                found_in = "this machine's folder"
            elif remote is not None and _copy_remote(remote, source, folder):
                found_in = remote.url
            else:
                continue
            if remote is not None:
                _push(remote, folder)
        except Exception as exc:  # noqa: BLE001 - OSError, or botocore's errors: start over, never fail
            logger.warning("trial %d: could not copy the checkpoint of %s (%s); training from scratch",
                           number, source.name, exc)
            forget(folder, *earlier)  # here only: the bucket keeps them for a later attempt
            return
        logger.info("trial %d resumes from the checkpoint of %s (from %s)", number, source.name, found_in)
        break
    forget(*earlier, remote=remote)


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, keeping the previous checkpoint too (`double_checkpoint`), and
    starting from scratch, with a warning, when no checkpoint can be read: a worker killed while it
    wrote one must not make its retry fail.

    It writes at an epoch's end only when `every_s` seconds (CHECKPOINT_EVERY_S; 0: every epoch)
    have passed since its last write or the start of training, or when the worker was asked to stop
    (`stop`): cheap epochs do not each pay for a write, and a stopped trial's retry resumes from the
    epoch it stopped at. A worker killed outright loses at most `every_s` seconds of training.
    Restoring and writing are timed as the "checkpoint" phase of `timer`."""

    def __init__(self, folder: Path, trial: optuna.Trial, *, every_s: float = EVERY_S, stop: StopRequest | None = None,
                 timer: TrialTimer | None = None, clock: Callable[[], float] = time.monotonic,
                 remote: ObjectStore | None = None) -> None:
        if every_s < 0:
            raise ValueError(f"every_s cannot be negative but got {every_s}")
        super().__init__(str(folder), save_freq="epoch", double_checkpoint=True)
        self.folder, self.trial, self.every_s, self.stop, self.remote = folder, trial, every_s, stop, remote
        self.timer, self.clock = timer or TrialTimer(), clock
        self.writes = 0
        self._written_epoch: int | None = None
        self._last_write = clock()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        stopping = self.stop is not None and self.stop.is_set()
        if stopping or self.clock() - self._last_write >= self.every_s:
            self.save(epoch, logs)

    def save(self, epoch: int, logs: dict | None = None) -> None:
        """Write the checkpoint of `epoch`'s end, unless it is written already."""
        if self._written_epoch == epoch:
            return
        with self.timer.phase("checkpoint"):
            super().on_epoch_end(epoch, logs)
            if self.remote is not None:
                try:
                    _push(self.remote, self.folder)
                except Exception as exc:  # noqa: BLE001 - botocore's errors: the local checkpoint stands
                    logger.warning("trial %d: checkpoint of epoch %d not uploaded to %s (%s); a retry on another "
                                   "machine resumes from the last one uploaded", self.trial.number, epoch + 1,
                                   self.remote.url, exc)
        self._written_epoch, self._last_write = epoch, self.clock()
        self.writes += 1

    def on_train_begin(self, logs: dict | None = None) -> None:
        with self.timer.phase("checkpoint"):
            self._restore(logs)
        self._last_write = self.clock()

    def _restore(self, logs: dict | None) -> None:
        fresh = self.model.get_weights()
        try:
            super().on_train_begin(logs)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means: start over
            logger.warning("trial %d: checkpoint in %s unreadable (%s: %s); training from scratch",
                           self.trial.number, self.folder, type(exc).__name__, str(exc).splitlines()[0][:200])
            self.model.set_weights(fresh)
            restart_from_epoch(self.model, 0)
            forget(self.folder)
            self.trial.set_user_attr(attrs.CHECKPOINT_UNREADABLE, f"{type(exc).__name__}: {exc}"[:300])


def _lost(trial: optuna.Trial, exc: BaseException) -> TrialLost | None:
    """TrialLost when the store no longer has the trial RUNNING: whatever broke in a worker paused
    past the grace period (its folder removed under it, say) is not the trial's doing."""
    state = fresh_trial(trial).state
    if state == optuna.trial.TrialState.RUNNING:
        return None
    return TrialLost(f"trial {trial.number} is {state.name} in the store (failed by the reaper while this worker "
                     f"was paused or cut off); here it raised {type(exc).__name__}: {str(exc)[:200]}")


class Checkpoints:
    """Where a study's attempts checkpoint, and what happens to a folder when an attempt ends."""

    def __init__(self, root: Path, study_name: str, *, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic, remote: ObjectStore | None = None) -> None:
        self.root, self.study_name, self.every_s, self.clock, self.remote = root, study_name, every_s, clock, remote

    def _folder(self, uid: str, number: int) -> Path:
        return self.root / f"{self.study_name}-{uid}-{number}"

    @contextlib.contextmanager
    def attempt(self, trial: optuna.Trial, *, stop: StopRequest | None = None,
                timer: TrialTimer | None = None) -> Iterator[ResumableBackup]:
        """This attempt's BackupAndRestore callback. The folder is dropped when the attempt ends
        for good (finished, pruned, failed) and kept when it may be resumed (stopped, lost)."""
        frozen = fresh_trial(trial)
        uid = trial.study.user_attrs.get(attrs.STUDY_UID, "nouid")
        folder = self._folder(uid, trial.number)
        forget(folder)  # stale files of an older study of this name
        earlier = [self._folder(uid, n) for n in reversed(frozen.system_attrs.get(attrs.RETRY_HISTORY, []))]
        origin = lineage(frozen)
        if origin != trial.number:
            # fail_reason/fail_message are inherited from the failed original: cleared
            for key, value in ((attrs.RETRY_OF, origin), (attrs.FAIL_REASON, None), (attrs.FAIL_MESSAGE, None)):
                trial.set_user_attr(key, value)
            adopt(folder, earlier, trial.number, remote=self.remote)
        backup: ResumableBackup | None = None

        def uploaded() -> ObjectStore | None:
            """The bucket, when this lineage may have objects there: a retry's, or an attempt that wrote a
            checkpoint. A first attempt that wrote none (most short trials) ends without a call to it."""
            return self.remote if earlier or (backup is not None and backup.writes) else None

        try:
            backup = ResumableBackup(folder, trial, every_s=self.every_s, stop=stop, timer=timer, clock=self.clock,
                                     remote=self.remote)
            yield backup
        except _KEEP:
            raise
        except Exception as exc:
            lost = _lost(trial, exc)
            if lost is not None:
                raise lost from exc
            forget(folder, *earlier, remote=uploaded())
            raise
        except BaseException:
            forget(folder, *earlier, remote=uploaded())
            raise
        forget(folder, *earlier, remote=uploaded())
