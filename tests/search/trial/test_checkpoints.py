"""Epoch checkpoints: a retry resumes its lineage, a cut-off write is not trusted, a paused
predecessor does not clash with its retry; and a trial waits through a store outage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from helpers.synthetic import TINY, easy_splits, memory_study
from optuna.trial import TrialState

from search import (
    TrialFailure,
    create_study,
    parse_spec,
    suggest,
)
from search.trial._checkpoints import Checkpoints
from search.trial._objective import Objective


def test_checkpoints_resume_retries_only_and_do_not_outlive_their_trial(tmp_path):
    """Regression: a re-created study with the same name loaded a pruned trial's stale checkpoint."""
    text = TINY + """warm_start:
  - {optimizer: adam, learning_rate: 0.003}
  - {optimizer: sgd, learning_rate: 1.0e-7, momentum: 0.9}
"""
    spec, study = memory_study(text)
    uid = study.user_attrs["uid"]
    stale = tmp_path / f"tiny-{uid}-0"
    stale.mkdir(parents=True)
    (stale / "training_metadata.json").write_text('{"epoch": 2}')  # junk from an older study of that name
    objective = Objective(spec, easy_splits(), checkpoints=Checkpoints(tmp_path, spec.name))
    study.optimize(objective, n_trials=2, catch=(TrialFailure,))
    first, second = study.trials
    assert first.state == TrialState.COMPLETE and "resumed_from_epoch" not in first.user_attrs
    assert len(first.intermediate_values) == 3  # trained from epoch 1, not resumed at 3
    assert second.state == TrialState.PRUNED
    assert list(tmp_path.iterdir()) == []  # neither the completed nor the pruned trial left a checkpoint
    other = create_study(parse_spec(TINY, name="tiny2"), optuna.storages.InMemoryStorage())
    assert other.user_attrs["uid"] != uid

class _FlakyStorage(optuna.storages.InMemoryStorage):
    """In-memory store that drops the connection once for each named call, after `armed` is set:
    a PostgreSQL restart as a training trial sees it."""

    def __init__(self, flaky: set[str]) -> None:
        super().__init__()
        self.pending, self.armed, self.dropped = set(flaky), False, []

    def _maybe_drop(self, name: str) -> None:
        if self.armed and name in self.pending:
            import sqlalchemy.exc

            self.pending.discard(name)
            self.dropped.append(name)
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    def set_trial_intermediate_value(self, *args, **kwargs):
        self._maybe_drop("report")
        return super().set_trial_intermediate_value(*args, **kwargs)

    def get_trial(self, *args, **kwargs):
        self._maybe_drop("get_trial")
        return super().get_trial(*args, **kwargs)

    def set_trial_user_attr(self, trial_id, key, value):
        if key == "epochs_run":
            self._maybe_drop("record the result")
        return super().set_trial_user_attr(trial_id, key, value)

def test_a_training_trial_waits_through_a_store_outage_instead_of_failing(tmp_path, monkeypatch):
    """Regression (CI, fault row 3): each store call a trial made while training raised on a
    PostgreSQL restart, failing the trial; two restarts then used up its retries. Now it waits."""
    from search.study._store import ResilientStorage

    spec = parse_spec(TINY.replace("pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}",
                                   "pruner: none"), name="tiny")
    storage = _FlakyStorage({"report", "get_trial", "record the result"})
    waits: list[float] = []
    study = create_study(spec, ResilientStorage(storage, sleep=waits.append, jitter=lambda: 0.0))
    objective = Objective(spec, easy_splits(), checkpoints=Checkpoints(tmp_path, spec.name))
    trial = study.ask()
    storage.armed = True
    value = objective(trial)
    study.tell(trial, value)
    assert sorted(storage.dropped) == ["get_trial", "record the result", "report"]  # every outage was hit
    assert waits == [0.5, 0.5, 0.5]  # each waited out once (1 s, jittered x0.5), no clock needed
    done = study.trials[0]
    assert done.state == TrialState.COMPLETE and len(done.intermediate_values) == 3
    assert done.user_attrs["epochs_run"] == 3 and "fail_reason" not in done.user_attrs

@pytest.mark.parametrize("damage", ["truncated weights", "no previous copy"])
def test_a_retry_whose_checkpoint_was_cut_off_mid_write_trains_from_scratch(tmp_path, damage):
    """A worker SIGKILLed while Keras wrote its checkpoint leaves a broken file; the retry must not fail."""
    from search.study._retries import fail_and_retry

    text = TINY.replace("pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}", "pruner: none")
    spec, study = memory_study(text)
    original = study.ask()
    suggest(original, spec)
    fail_and_retry(study, original.number, "stale", "no heartbeat (test)")
    folder = tmp_path / f"tiny-{study.user_attrs['uid']}-{original.number}"
    folder.mkdir()
    (folder / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)  # cut off after the header
    (folder / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    if damage == "truncated weights":  # the previous epoch's copy is cut off too
        (folder / "latest.weights.h5.bkp").write_bytes(b"\x89HDF")
    study.optimize(Objective(spec, easy_splits(), checkpoints=Checkpoints(tmp_path, spec.name)), n_trials=1, catch=(TrialFailure,))
    retry = study.trials[-1]
    assert retry.system_attrs["failed_trial"] == original.number
    assert retry.state == TrialState.COMPLETE, retry.user_attrs
    assert "checkpoint_unreadable" in retry.user_attrs
    assert len(retry.intermediate_values) == 3 and "resumed_from_epoch" not in retry.user_attrs  # from epoch 1
    assert not folder.exists()

def _stopped_after_one_epoch(spec, study, root: Path):
    """A trial that trained one epoch, checkpointed, and was then failed and queued for retry."""
    from search.errors import WorkerStopping
    from search.study._retries import fail_and_retry
    from search.worker._signals import StopFlag

    stop = StopFlag()
    stop.event.set()  # as after SIGTERM: stop at the first epoch end, once the checkpoint is written
    original = study.ask()
    with pytest.raises(WorkerStopping):
        Objective(spec, easy_splits(), checkpoints=Checkpoints(root, spec.name), stop=stop)(original)
    fail_and_retry(study, original.number, "stale", "no heartbeat (test)")
    folder = root / f"tiny-{study.user_attrs['uid']}-{original.number}"
    assert (folder / "latest.weights.h5").exists()
    return original, folder

def test_a_retry_resumes_while_its_paused_predecessor_still_holds_its_checkpoint_open(tmp_path):
    """Regression (CI): a worker paused past the grace period mid-save still held its HDF5 checkpoint
    open when its trial's retry started; with one folder per lineage, HDF5's file lock refused the
    retry's read and the retry trained from scratch. Each attempt now has a folder of its own and a
    retry restores from a copy."""
    text = TINY.replace("pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}", "pruner: none")
    spec, study = memory_study(text)
    original, folder = _stopped_after_one_epoch(spec, study, tmp_path)
    holder = subprocess.Popen(  # the paused worker, in the middle of writing its checkpoint
        [sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'r+'); print('held', flush=True); "
         "time.sleep(600)", str(folder / "latest.weights.h5")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        study.optimize(Objective(spec, easy_splits(), checkpoints=Checkpoints(tmp_path, spec.name)), n_trials=1, catch=(TrialFailure,))
    finally:
        holder.kill()
        holder.wait()
    retry = study.trials[-1]
    assert retry.system_attrs["failed_trial"] == original.number and retry.state == TrialState.COMPLETE
    assert "checkpoint_unreadable" not in retry.user_attrs, retry.user_attrs["checkpoint_unreadable"]
    assert retry.user_attrs["resumed_from_epoch"] == 1
    assert sorted(retry.intermediate_values) == [0, 1, 2]
    assert list(tmp_path.iterdir()) == []  # the predecessor's folder dropped once copied, the retry's at its end

def test_a_paused_worker_that_wakes_up_to_an_error_reports_its_trial_lost_and_keeps_the_checkpoint(
        tmp_path, monkeypatch):
    """A paused worker can wake up to any error (the retry's worker removed a folder under it, say).
    If its trial is no longer RUNNING that is no failure of the trial: TrialLost, checkpoint kept."""
    from search.errors import TrialLost
    from search.study._retries import fail_and_retry
    from search.trial._checkpoints import ResumableBackup

    text = TINY.replace("pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}", "pruner: none")
    spec, study = memory_study(text)
    trial = study.ask()

    def reaped_then_broken(self, epoch, logs=None):
        super(ResumableBackup, self).on_epoch_end(epoch, logs)
        fail_and_retry(study, trial.number, "stale", "no heartbeat (test)")  # another worker's reaper
        raise FileNotFoundError(f"{self.folder}/training_metadata.json")

    monkeypatch.setattr(ResumableBackup, "on_epoch_end", reaped_then_broken)
    with pytest.raises(TrialLost, match="FileNotFoundError"):
        Objective(spec, easy_splits(), checkpoints=Checkpoints(tmp_path, spec.name))(trial)
    assert list(tmp_path.glob(f"tiny-*-{trial.number}/latest.weights.h5"))  # the retry's to resume from
    assert study.trials[trial.number].user_attrs["fail_reason"] == "stale"
