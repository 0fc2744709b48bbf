"""Workers with no folder in common (ARTIFACTS_URL=s3://..., each its own ARTIFACTS_DIR, as pods
with an emptyDir): a worker killed mid-trial, and its retry resumes on the other machine from the
checkpoint in the bucket. A real S3-compatible server (moto) and the local PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from helpers.s3_server import s3_server
from helpers.synthetic import SERVICE_STUDY
from optuna.trial import TrialState

from storage import close_storage, open_storage


def _wait(condition, timeout: float, what: str, procs, logs):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if all(p.poll() is not None for p in procs):
            break
        time.sleep(0.5)
    pytest.fail(f"{what}: not seen in {timeout}s\n" + "\n".join(f"--- {log}\n{log.read_text()[-2000:]}" for log in logs))


def test_a_retry_on_another_machine_resumes_from_the_checkpoint_in_object_storage(tmp_path, journal_pg_url,
                                                                                  shared_datasets, shared_cache):
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "objects.yaml").write_text(
        SERVICE_STUDY.replace("TRIALS", "3").replace("EPOCHS", "6").replace("MAX_TRAIN", "1500"))
    with s3_server(tmp_path / "moto") as s3:
        env = {**os.environ, **s3.env("study-a"), "STUDIES_DIR": str(studies), "STORAGE": journal_pg_url,
               "DATA_DIR": str(shared_datasets), "DATA_CACHE": str(shared_cache), "CUDA_VISIBLE_DEVICES": "",
               "HEARTBEAT_INTERVAL": "1", "GRACE_PERIOD": "6", "CHECKPOINT_EVERY_S": "0", "PYTHONUNBUFFERED": "1"}
        created = subprocess.run([sys.executable, "-m", "search", "create", "objects"], env=env, capture_output=True,
                                 text=True, timeout=120)
        assert created.returncode == 0, created.stderr[-3000:]
        logs = [tmp_path / f"w{i}.log" for i in range(2)]
        procs = []
        for i, log in enumerate(logs):  # two machines: an artifact folder each, nothing shared but the bucket
            with open(log, "w") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "search.worker", "objects", "--worker-index", str(i)],
                    env={**env, "ARTIFACTS_DIR": str(tmp_path / f"machine{i}")}, stdout=out,
                    stderr=subprocess.STDOUT))
        storage = open_storage(journal_pg_url)
        try:
            def running_with_two_epochs():
                trials = optuna.load_study(study_name="objects", storage=storage).trials
                return next((t for t in trials if t.state == TrialState.RUNNING and len(t.intermediate_values) >= 2),
                            None)

            victim_trial = _wait(running_with_two_epochs, 300, "a running trial with two epochs done", procs, logs)
            victim = next(i for i, log in enumerate(logs) if f"trial {victim_trial.number} epoch" in log.read_text())
            folder = "checkpoints/objects-"
            assert any(folder in key and key.endswith(f"-{victim_trial.number}/training_metadata.json")
                       for key in s3.keys("study-a/"))  # its checkpoint is in the bucket
            procs[victim].send_signal(signal.SIGKILL)
            other = 1 - victim
            assert procs[other].wait(timeout=300) == 0, logs[other].read_text()[-3000:]
            trials = optuna.load_study(study_name="objects", storage=storage).trials
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            close_storage(storage)
        text = logs[other].read_text()
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim_trial.number]
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, text[-3000:]
        assert retries[0].user_attrs.get("resumed_from_epoch", 0) >= 1  # from the dead machine's epochs
        assert f"trial {retries[0].number} resumes from the checkpoint of objects-" in text
        assert f"(from {s3.url('study-a')}/checkpoints)" in text  # the bucket: the dead machine's folder is not here
        assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
        assert not [k for k in s3.keys("study-a/") if "/checkpoints/" in k]  # every lineage ended: none left
