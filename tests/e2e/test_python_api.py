"""The Python API end to end (issue: where practitioners work, parts 1 and 4): a builder function defined
as a notebook defines it and arrays held in memory, run with 2 workers on PostgreSQL, watched with a
progress bar, recorded in a real MLflow server, then read back as an ordinary study (`status`,
Study.load), evaluated (the final model registered in MLflow) and reported. The same on the embedded
store runs in tests/search/test_api.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.mlflow_server import mlflow_server
from helpers.notebook import notebook_function
from helpers.processes import run_cli
from mlflow.tracking import MlflowClient

import search


def test_a_notebook_function_and_arrays_run_with_two_workers_on_postgresql(tmp_path, journal_pg_url, monkeypatch,
                                                                         capsys):
    store = journal_pg_url
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.delenv("STUDIES_DIR", raising=False)
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    x = (y[:, None, None] * 80 + rng.integers(0, 40, (90, 12, 12))).astype(np.uint8)  # learnable
    with mlflow_server(tmp_path / "mlflow") as mlflow_uri:
        _run_record_and_read_back(tmp_path, store, mlflow_uri, x, y, capsys)


def _run_record_and_read_back(tmp_path, store, mlflow_uri, x, y, capsys):
    study = search.Study("nb_e2e", architecture=notebook_function(), dataset=(x, y), storage=store,
                         space={"dense_units": {"choices": [8, 16]}, "dropout": {"low": 0.0, "high": 0.5},
                                "batch_size": {"choices": [16]}},
                         budget={"trials": 4, "max_epochs": 2}, sampler={"name": "random", "seed": 0},
                         pruner="none", tracking={"mlflow": mlflow_uri})
    assert study.run(workers=2, progress=True, poll_s=0.5) is study
    bar = capsys.readouterr().err
    assert "study nb_e2e" in bar and "4/4" in bar and "best 0." in bar, bar[-2000:]
    assert study.best is not None and set(study.best["params"]) == {"dense_units", "dropout", "batch_size"}
    frame = study.trials_dataframe()
    assert len(frame) == 4 and set(frame["state"]) == {"COMPLETE"}
    workers = {t.user_attrs["worker"].split("@")[0] for t in study.optuna_study().trials}
    assert workers == {"w0", "w1"}  # two worker processes shared the budget
    # An ordinary study: the CLI and Study.load see it.
    status = run_cli("status", "nb_e2e", "--json", env={"STUDIES_DIR": str(tmp_path / "studies"), "STORAGE": store})
    assert status.returncode == 0, status.stderr[-2000:]
    assert json.loads(status.stdout)["best_value"] == pytest.approx(study.best["value"])
    assert search.Study.load("nb_e2e", storage=store).best == study.best
    record = study.evaluate(seeds=3)
    assert record["trial"] == study.best["trial"] and 0.0 <= record["test_accuracy"] <= 1.0
    assert len(record["val_accuracy_per_seed"]) == 3
    # MLflow: the study's run, one nested run per trial (written by the worker that ran it), the model registered.
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("cnn-search").experiment_id])
    trial_runs = {r.data.tags["cnn_search.trial"]: r for r in runs if r.data.tags.get("cnn_search.kind") == "trial"}
    assert sorted(trial_runs) == ["0", "1", "2", "3"]
    best = trial_runs[str(study.best["trial"])]
    assert best.data.metrics["value"] == pytest.approx(study.best["value"])
    assert best.data.tags["worker"].split("@")[0] in {"w0", "w1"} and "dataset_fingerprint" in best.data.tags
    version = client.get_model_version("nb_e2e", record["mlflow_model_version"])
    assert float(version.tags["test_accuracy"]) == pytest.approx(record["test_accuracy"], abs=1e-4)
    report = study.report(out=tmp_path / "reports")
    assert report.is_file() and "nb_e2e" in report.read_text()
    assert report._repr_html_().startswith("<iframe srcdoc=")  # what a notebook shows
