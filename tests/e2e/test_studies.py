"""Whole studies through `python -m search run`: two workers on the embedded store and on PostgreSQL,
a feature-cache study's one-time base, and SIGTERM while it trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from helpers.processes import REPO, run_cli
from helpers.synthetic import FEATURE_STUDY


def test_smoke_study_two_workers_on_the_embedded_store(tmp_path, shared_datasets, shared_cache):
    env = {"DATA_DIR": str(shared_datasets), "DATA_CACHE": str(shared_cache)}
    store = f"journal://{tmp_path / 'studies.journal'}"
    run = run_cli("run", "simple_cnn", "--workers", "2", "--profile", "smoke", "--trials", "4", "--storage", store,
               "--poll", "0.5", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[study simple_cnn] 4/4 finished" in run.stdout
    assert "epoch 1/2 val_accuracy=" in run.stderr
    assert "database is locked" not in run.stderr and "Traceback" not in run.stderr
    status = json.loads(run_cli("status", "simple_cnn", "--json", "--storage", store).stdout)
    assert status["n_complete"] + status["n_pruned"] + status["n_fail"] == 4
    assert status["n_running"] == 0 and status["n_fail"] == 0
    assert 0.1 < status["best_value"] < 1
    # Running again with the budget met does nothing and duplicates nothing.
    again = run_cli("run", "simple_cnn", "--workers", "2", "--profile", "smoke", "--trials", "4", "--storage", store,
                 env=env)
    assert again.returncode == 0
    assert json.loads(run_cli("status", "simple_cnn", "--json", "--storage", store).stdout)["n_complete"] == status["n_complete"]

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

def test_run_prepares_the_base_once_on_every_core_then_workers_share_the_cores(tmp_path, shared_datasets,
                                                                               shared_cache):
    env = _feature_run_env(tmp_path, shared_datasets, shared_cache, base_epochs=1)
    run = run_cli("run", "feat", "--workers", "2", "--poll", "0.5", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stderr
    assert log.count("training the s000_model_3_1 base once") == 1 and log.count("is ready for its workers") == 1
    assert log.index("is ready for its workers") < log.index("joining study feat")  # before any worker starts
    assert log.count("reusing cached features") == 2  # both workers, none recomputes
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert log.count(f"TensorFlow ops limited to {threads} CPU thread(s) (WORKER_THREADS)") == 2
    assert "TensorFlow ops limited" not in log[:log.index("is ready for its workers")]  # the base had every core
    assert "[study feat] 3/3 finished" in run.stdout
    _evaluate_confirms_the_top_trials_as_trials_on_two_workers(env)


def _evaluate_confirms_the_top_trials_as_trials_on_two_workers(env: dict) -> None:
    """Issue (the winner users get), part 2: the top trials' confirmations are trials of the study's
    confirmation stage, run by two workers, never part of the search's trials, budget or sampler."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(env["STORAGE"][len("journal://"):]))
    search = optuna.load_study(study_name="feat", storage=storage)
    before = [(t.number, t.state, t.values, t.params) for t in search.trials]
    evaluate = run_cli("evaluate", "feat", "--top-k", "3", "--workers", "2", env=env)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "confirmed the top 3 trials over 3 seeds each" in evaluate.stdout, evaluate.stdout
    search = optuna.load_study(study_name="feat", storage=storage)
    assert [(t.number, t.state, t.values, t.params) for t in search.trials] == before  # nothing added to the search
    assert not any("stage" in t.user_attrs for t in search.trials)
    confirm = optuna.load_study(study_name="feat.confirm", storage=storage)
    trials = confirm.trials
    assert len(trials) == 9 and all(t.state.name == "COMPLETE" and t.user_attrs["stage"] == "confirm" for t in trials)
    assert {t.user_attrs["worker"].split("@")[0] for t in trials} == {"w0", "w1"}  # run in parallel by both
    record = search.user_attrs["final_evaluation"]
    for c in record["candidates"]:
        mine = sorted((t.user_attrs["confirm_seed"], t.values[0]) for t in trials if t.user_attrs["confirms"] == c["trial"])
        assert [s for s, _ in mine] == [0, 1, 2] and [t.params for t in trials if t.user_attrs["confirms"] == c["trial"]] \
            == [search.trials[c["trial"]].params] * 3
        assert c["confirmed_mean"] == pytest.approx(sum(v for _, v in mine) / 3)
    assert record["trial"] == max(record["candidates"], key=lambda c: c["confirmed_mean"])["trial"]
    assert [a["trial"] for a in search.user_attrs["test_accesses"]] == [record["trial"]]
    assert "reusing cached features" in evaluate.stderr and "base once" not in evaluate.stderr  # the search's cache
    print(evaluate.stdout)  # for -s: the candidates as `make evaluate` prints them
    status = run_cli("status", "feat", env=env).stdout
    assert "confirmation stage: [study feat.confirm] 9/9 finished: 9 complete" in status, status
    assert f"tested: trial {record['trial']}" in status and "<- picked" in status

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

def test_smoke_study_on_postgresql(tmp_path, postgres_url, shared_datasets, shared_cache):
    name = f"pg_smoke_{uuid.uuid4().hex[:8]}"
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / f"{name}.yaml").write_text((REPO / "search/studies/mnist_cnn.yaml").read_text())
    env = {"DATA_DIR": str(shared_datasets), "DATA_CACHE": str(shared_cache), "STUDIES_DIR": str(studies),
           "STORAGE": postgres_url}
    try:
        run = run_cli("run", name, "--workers", "2", "--profile", "smoke", "--trials", "4", "--epochs", "1",
                   "--poll", "0.5", env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        status = json.loads(run_cli("status", name, "--json", env=env).stdout)
        assert status["n_complete"] + status["n_pruned"] == 4 and status["n_running"] == 0
        assert status["best_value"] > 0.5  # MNIST after one epoch on 2,000 images
    finally:
        from storage import open_storage

        optuna.delete_study(study_name=name, storage=open_storage(postgres_url))
