from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import keras
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from synthetic import easy_splits
from test_features import FEATURE_STUDY

from search import (
    StudyMismatchError,
    TrialFailure,
    check_compatible,
    create_study,
    load_spec,
    make_pruner,
    make_sampler,
    parse_spec,
    suggest,
    trial_config,
)
from search.trial._checkpoints import Checkpoints
from search.trial._objective import Objective

TINY = """
architecture: s000_model_1
dataset: cifar10
space:
  optimizer: {choices: [adam, sgd]}
  learning_rate: {low: 1.0e-7, high: 1.0e+4, log: true}
  momentum: {low: 0.5, high: 0.99, when: {optimizer: sgd}}
  batch_size: {choices: [32]}
sampler: {name: random, seed: 0}
pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}
budget: {trials: 3, max_epochs: 3}
early_stopping: {patience: 3}
"""


def _study(text: str, name: str = "tiny"):
    spec = parse_spec(text, name=name)
    storage = optuna.storages.InMemoryStorage()
    study = create_study(spec, storage)
    study.sampler, study.pruner = make_sampler(spec), make_pruner(spec)
    return spec, study


def test_conditional_knob_only_when_its_condition_holds():
    spec = parse_spec(TINY, name="tiny")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = []
    for _ in range(20):
        trial = study.ask()
        values = suggest(trial, spec)
        seen.append(values)
        assert ("momentum" in values) == (values["optimizer"] == "sgd")
        study.tell(trial, 0.0)
    assert {v["optimizer"] for v in seen} == {"adam", "sgd"}


def test_dense_units_follow_dense_layers():
    spec = load_spec("fc_head")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        values = suggest(trial, spec)
        units = [k for k in values if k.startswith("dense_units_")]
        assert len(units) == values["dense_layers"]
        cfg = trial_config(spec, values, input_shape=(32, 32, 3), num_classes=100)
        assert cfg.model.head.dense_units == tuple(values[k] for k in units)
        assert cfg.model.head.activation == values["activation"]
        assert cfg.train.batch_size == values["batch_size"]
        study.tell(trial, 0.0)


def test_augmentation_knobs_reach_the_config():
    spec = load_spec("vgg_bn")
    on = trial_config(spec, {"augment": True, "rotation": 5.0}, input_shape=(32, 32, 3), num_classes=10)
    off = trial_config(spec, {"augment": False}, input_shape=(32, 32, 3), num_classes=10)
    assert on.augment.rotation == 5.0 and on.augment.width_shift == 0.1 and on.augment.horizontal_flip
    assert off.augment is None


def test_warm_starts_run_first_and_the_pruner_prunes():
    text = TINY + """warm_start:
  - {optimizer: adam, learning_rate: 0.003}
  - {optimizer: sgd, learning_rate: 1.0e-7, momentum: 0.9}
"""
    spec, study = _study(text)
    study.optimize(Objective(spec, easy_splits()), n_trials=2, catch=(TrialFailure,))
    first, second = study.trials
    assert first.params == {"optimizer": "adam", "learning_rate": 0.003, "batch_size": 32}
    assert second.params["learning_rate"] == 1e-7
    assert first.state == TrialState.COMPLETE and first.value > 0.5
    assert second.state == TrialState.PRUNED  # at chance after epoch 1, below the first trial's median
    assert len(second.intermediate_values) < 3
    for key in ("epochs_run", "best_epoch", "n_params", "train_seconds", "images_per_s", "device", "backend",
                "dataset_fingerprint", "space_hash", "code_version"):
        assert key in first.user_attrs, key
    assert first.user_attrs["n_params"] == 42_442
    assert first.user_attrs["backend"] == keras.backend.backend()


def test_nan_loss_fails_the_trial_and_the_worker_goes_on(monkeypatch):
    text = TINY.replace("n_startup_trials: 1", "n_startup_trials: 5") + """warm_start:
  - {optimizer: adam, learning_rate: 0.003}
  - {optimizer: sgd, learning_rate: 10000.0, momentum: 0.99}
  - {optimizer: adam, learning_rate: 0.001}
"""
    spec, study = _study(text)
    # SGD at lr 1e4 diverged to a NaN loss on one CPU but not on another: where ReLU is computed
    # with AVX-512's max, relu(NaN) is 0, so NaN weights or inputs can vanish before the loss (seen
    # on this repository's CI machine). A NaN sample weight makes the second trial's loss NaN on any
    # CPU, through the same TerminateOnNaN path.
    real_fit, calls = keras.Model.fit, {"n": 0}

    def fit_with_a_nan_loss_in_trial_two(self, x, y, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            kwargs["sample_weight"] = np.full(len(y), np.nan, dtype="float32")
        return real_fit(self, x, y, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit_with_a_nan_loss_in_trial_two)
    study.optimize(Objective(spec, easy_splits()), n_trials=3, catch=(TrialFailure,))
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].user_attrs["fail_reason"] == "nan"
    assert study.best_trial.number in (0, 2)
    assert all(t.value is None or 0 <= t.value <= 1 for t in study.trials)


def test_out_of_memory_fails_with_reason_oom_and_the_next_trial_finishes(monkeypatch):
    text = TINY.replace("n_startup_trials: 1", "n_startup_trials: 5") + """warm_start:
  - {optimizer: adam, learning_rate: 0.003}
  - {optimizer: adam, learning_rate: 0.002}
"""
    spec, study = _study(text)
    real_fit = keras.Model.fit
    calls = {"n": 0}

    def fit_once_oom(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("Unable to allocate 80.0 GiB for an array")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit_once_oom)
    study.optimize(Objective(spec, easy_splits()), n_trials=2, catch=(TrialFailure,))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["fail_reason"] == "oom"
    assert "80.0 GiB" in study.trials[0].user_attrs["fail_message"]


def test_unbuildable_config_fails_the_trial_not_the_worker():
    text = """
architecture: s000_model_2_3
dataset: cifar10
space:
  depth: {choices: [9]}
sampler: random
pruner: none
budget: {trials: 1, max_epochs: 1}
"""
    spec, study = _study(text)
    study.optimize(Objective(spec, easy_splits(100, 20)), n_trials=1, catch=(TrialFailure,))
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs["fail_reason"] == "build"


def test_changed_space_is_refused_naming_the_difference():
    spec, study = _study(TINY)
    changed = parse_spec(TINY.replace("choices: [32]", "choices: [32, 64]"), name="tiny")
    with pytest.raises(StudyMismatchError, match=r"space: study has .*this file has"):
        check_compatible(study, changed)
    check_compatible(study, parse_spec(TINY.replace("trials: 3", "trials: 30"), name="tiny"))  # budget may change


def test_seeded_workers_sample_differently():
    spec = parse_spec(TINY.replace("{name: random, seed: 0}", "tpe"), name="tiny")
    first = []
    for worker in range(4):
        study = optuna.create_study(sampler=make_sampler(spec, worker_index=worker))
        first.append(suggest(study.ask(), spec)["learning_rate"])
    assert len(set(first)) == 4


# --- end to end, as a user runs it ---------------------------------------------------------------


def _cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.mark.slow
def test_smoke_study_two_workers_on_the_embedded_store(tmp_path, shared_datasets, shared_cache):
    env = {"DATA_DIR": str(shared_datasets), "DATA_CACHE": str(shared_cache)}
    store = f"journal://{tmp_path / 'studies.journal'}"
    run = _cli("run", "simple_cnn", "--workers", "2", "--profile", "smoke", "--trials", "6", "--storage", store,
               "--poll", "0.5", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[study simple_cnn] 6/6 finished" in run.stdout
    assert "epoch 1/2 val_accuracy=" in run.stderr
    assert "database is locked" not in run.stderr and "Traceback" not in run.stderr
    status = json.loads(_cli("status", "simple_cnn", "--json", "--storage", store).stdout)
    assert status["n_complete"] + status["n_pruned"] + status["n_fail"] == 6
    assert status["n_running"] == 0 and status["n_fail"] == 0
    assert 0.1 < status["best_value"] < 1
    # Running again with the budget met does nothing and duplicates nothing.
    again = _cli("run", "simple_cnn", "--workers", "2", "--profile", "smoke", "--trials", "6", "--storage", store,
                 env=env)
    assert again.returncode == 0
    assert json.loads(_cli("status", "simple_cnn", "--json", "--storage", store).stdout)["n_complete"] == status["n_complete"]


def test_run_with_a_dataset_that_is_not_there_fails_before_the_study_is_created(tmp_path, shared_datasets,
                                                                                 shared_cache):
    """Seen by hand: `make study NAME=fc_head` offline (CIFAR-100 has no copy here) created the study,
    then failed in the base-preparing child; the corrected `DATASET=cifar10` was then refused as a
    changed setup. The data is now looked for first."""
    env = {"DATA_DIR": str(shared_datasets), "DATA_CACHE": str(shared_cache), "DATA_OFFLINE": "1"}  # no download try
    journal = tmp_path / "studies.journal"
    store = f"journal://{journal}"
    run = _cli("run", "fc_head", "--workers", "2", "--profile", "smoke", "--storage", store, env=env, timeout=120)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "no copy of cifar100 found" in run.stderr and "Set DATA_DIR" in run.stderr
    assert "Traceback" not in run.stderr
    if journal.exists():
        from storage import open_storage

        assert optuna.get_all_study_names(open_storage(store)) == []


# test_features's study, run end to end: more trials, one epoch each, on a subset of the real data.
FEATURE_RUN = (FEATURE_STUDY.replace("budget: {trials: 2, max_epochs: 2}",
                                     "budget: {trials: 3, max_epochs: 1}\ndata: {max_train: 1000, max_val: 200}")
               .replace("feature_cache: {base_epochs: 1}", "feature_cache: {base_epochs: EPOCHS}"))


def test_the_end_to_end_feature_study_is_test_features_study_with_a_longer_budget():
    assert "EPOCHS" in FEATURE_RUN and "max_train: 1000" in FEATURE_RUN  # the replacements above took


def _feature_run_env(tmp_path, shared_datasets, shared_cache, base_epochs: int) -> dict:
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "feat.yaml").write_text(FEATURE_RUN.replace("EPOCHS", str(base_epochs)))
    return {"DATA_DIR": str(shared_datasets), "DATA_CACHE": str(shared_cache), "STUDIES_DIR": str(studies),
            "ARTIFACTS_DIR": str(tmp_path / "artifacts"), "STORAGE": f"journal://{tmp_path / 'studies.journal'}",
            "CUDA_VISIBLE_DEVICES": "", "WORKER_THREADS": ""}


@pytest.mark.slow
def test_run_prepares_the_base_once_on_every_core_then_workers_share_the_cores(tmp_path, shared_datasets,
                                                                               shared_cache):
    run = _cli("run", "feat", "--workers", "2", "--poll", "0.5",
               env=_feature_run_env(tmp_path, shared_datasets, shared_cache, base_epochs=1))
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stderr
    assert log.count("training the s000_model_3_1 base once") == 1 and log.count("is ready for its workers") == 1
    assert log.index("is ready for its workers") < log.index("joining study feat")  # before any worker starts
    assert log.count("reusing cached features") == 2  # both workers, none recomputes
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert log.count(f"TensorFlow ops limited to {threads} CPU thread(s) (WORKER_THREADS)") == 2
    assert "TensorFlow ops limited" not in log[:log.index("is ready for its workers")]  # the base had every core
    assert "[study feat] 3/3 finished" in run.stdout


@pytest.mark.slow
def test_sigterm_while_the_base_trains_stops_at_an_epoch_caches_nothing_and_starts_no_worker(
        tmp_path, shared_datasets, shared_cache):
    env = {**os.environ, **_feature_run_env(tmp_path, shared_datasets, shared_cache, base_epochs=200)}
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "search", "run", "feat", "--workers", "2"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while "base epoch 1/200" not in log_path.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log_path.read_text()[-3000:]
    text = log_path.read_text()
    assert "SIGTERM received" in text and "nothing was cached" in text
    assert "no worker was started" in text and "joining study" not in text
    assert "base epoch 20/200" not in text  # it stopped at an epoch boundary, not at the end
    assert not list((tmp_path / "artifacts").rglob("base.weights.h5"))
    assert "Traceback" not in text


@pytest.mark.slow
def test_smoke_study_on_postgresql(tmp_path, postgres_url, shared_datasets, shared_cache):
    name = f"pg_smoke_{uuid.uuid4().hex[:8]}"
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / f"{name}.yaml").write_text((Path(__file__).resolve().parent.parent / "search/studies/mnist_cnn.yaml").read_text())
    env = {"DATA_DIR": str(shared_datasets), "DATA_CACHE": str(shared_cache), "STUDIES_DIR": str(studies),
           "STORAGE": postgres_url}
    try:
        run = _cli("run", name, "--workers", "2", "--profile", "smoke", "--trials", "4", "--epochs", "1",
                   "--poll", "0.5", env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        status = json.loads(_cli("status", name, "--json", env=env).stdout)
        assert status["n_complete"] + status["n_pruned"] == 4 and status["n_running"] == 0
        assert status["best_value"] > 0.5  # MNIST after one epoch on 2,000 images
    finally:
        from storage import open_storage

        optuna.delete_study(study_name=name, storage=open_storage(postgres_url))


def test_checkpoints_resume_retries_only_and_do_not_outlive_their_trial(tmp_path):
    """Regression: a re-created study with the same name loaded a pruned trial's stale checkpoint."""
    text = TINY + """warm_start:
  - {optimizer: adam, learning_rate: 0.003}
  - {optimizer: sgd, learning_rate: 1.0e-7, momentum: 0.9}
"""
    spec, study = _study(text)
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
    spec, study = _study(text)
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
    spec, study = _study(text)
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
    spec, study = _study(text)
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


def test_the_worker_loop_goes_on_when_a_trial_reaped_meanwhile_raises(caplog):
    """Regression (CI): the paused worker's trial raised after the reaper had failed it; recording
    fail_reason "error" raised UpdateFinishedTrialError and the worker exited 1."""
    from search.study._retries import fail_and_retry
    from search.worker._liveness import Background, Liveness
    from search.worker._loop import run_loop
    from search.worker._signals import StopFlag

    spec, study = _study(TINY)

    def objective(trial):
        if trial.number == 0:
            fail_and_retry(study, 0, "stale", "no heartbeat (test)")
            raise OSError("the checkpoint folder vanished")
        return 0.5

    no_threads = Background(study, Liveness())  # not entered: heartbeats written inline, no threads
    with caplog.at_level("WARNING", logger="search.worker"):
        assert run_loop(study, spec, objective, StopFlag(), no_threads, "w0") is None
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE, TrialState.COMPLETE], states
    assert study.trials[0].user_attrs["fail_reason"] == "stale"
    assert study.trials[1].system_attrs["failed_trial"] == 0  # the retry ran
    assert "its error is dropped" in caplog.text


def test_bench_search_counts_epochs_until_ours_first_reaches_randoms_best():
    from benchmarks.search import Run, epochs_to_reach

    # Best-so-far after each trial and the cumulative epochs spent by then (a pruned trial adds few).
    ours = Run(best=[0.30, 0.30, 0.42, 0.45], epochs=[20, 21, 24, 44], seconds=1.0)
    assert epochs_to_reach(ours, 0.42) == (24, 3)  # reached by the third trial, after 24 epochs
    assert epochs_to_reach(ours, 0.30) == (20, 1)
    assert epochs_to_reach(ours, 0.46) == (None, None)  # never reached


def test_bench_search_trains_its_base_on_images_the_heads_never_see(monkeypatch, tmp_path):
    import types

    import numpy as np

    from benchmarks import search as bench
    from data._load import Dataset
    from data._specs import CIFAR10_CLASSES
    from search.trial._features import base_preset

    n = 2_000
    y = np.arange(n) % 10
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) // 256, np.arange(n) % 256  # each image carries its index
    dataset = Dataset("cifar10", x, y, CIFAR10_CLASSES, "ids", "test", x[:10], y[:10])
    seen = {}

    def fake_base(spec, splits):
        seen["base"] = (spec, splits)
        (tmp_path / "base.json").write_text(json.dumps({"val_accuracy": 0.5}))
        return tmp_path / "base.weights.h5"

    def fake_features(spec, splits):
        seen["features"] = (spec, splits)
        return types.SimpleNamespace(splits=splits)

    monkeypatch.setattr(bench, "ensure_base", fake_base)
    monkeypatch.setattr(bench, "ensure_features", fake_features)
    spec = load_spec("fc_head", dataset="cifar10")
    heads, n_base, base_val = bench.bench_features(spec, dataset, base="s003_vgg_blocks", base_epochs=3,
                                                   base_images=600, max_train=500)

    def ids(images):
        return set((images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 0, 1]).tolist())

    base_spec, base_splits = seen["base"]
    feature_spec, _ = seen["features"]
    assert base_preset(base_spec) == "s003_vgg_blocks" and base_spec.feature_cache.base_epochs == 3
    assert feature_spec.feature_cache.base_weights == str(tmp_path / "base.weights.h5")
    assert base_preset(feature_spec) == "s003_vgg_blocks"  # features are run through the base that was trained
    assert len(heads.y_train) == 500 and n_base == len(base_splits.y_train) == 600 and base_val == 0.5
    assert not ids(base_splits.x_train) & ids(heads.x_train)  # the base never trains on the heads' images
    assert not ids(base_splits.x_train) & ids(heads.x_val)  # nor on the validation split
    assert ids(base_splits.x_val) == ids(heads.x_val)
    assert np.bincount(base_splits.y_train).tolist() == [60] * 10  # stratified
    with pytest.raises(ValueError, match="leaves no training images"):
        bench.bench_features(spec, dataset, base="s003_vgg_blocks", base_epochs=1, base_images=10, max_train=n)
