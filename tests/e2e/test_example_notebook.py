"""examples/seed_002_search.ipynb, executed by a real Jupyter kernel (nbclient + ipykernel) on the smoke
profile (issue: where practitioners work, parts 1-4 and 6): seed 002's search through SearchCV with its
own print loop, then through search.Study (a builder function and arrays from the kernel, 2 workers,
a progress bar, evaluate, report), on CIFAR-10 from DATA_DIR, with the store on PostgreSQL and every
trial recorded in a real MLflow server; then read back from outside the kernel as ordinary studies.
The same Study on the embedded store runs in tests/search/test_api.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from helpers.mlflow_server import mlflow_server
from helpers.processes import run_cli
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient

import search

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "seed_002_search.ipynb"


def _out(cell, stream: str = "stdout") -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == stream) + "".join(
        o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", []) if stream == "stdout")


def test_the_example_notebook_runs_seed_002s_search_both_ways(tmp_path, monkeypatch, shared_datasets, shared_cache,
                                                              journal_pg_url):
    monkeypatch.setenv("DATA_DIR", str(shared_datasets))
    monkeypatch.setenv("DATA_CACHE", str(shared_cache))
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setenv("PROFILE", "smoke")
    monkeypatch.setenv("STORAGE", journal_pg_url)
    monkeypatch.delenv("STUDIES_DIR", raising=False)
    with mlflow_server(tmp_path / "mlflow") as mlflow_uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(notebook, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
        loaded, searched, studied, evaluated = (c for c in notebook.cells if c.cell_type == "code")
        print("\n---\n".join(_out(c) for c in (loaded, searched, studied, evaluated)))  # the output cells, for -s
        _check_outputs(tmp_path, loaded, searched, studied, evaluated)
        _check_mlflow(mlflow_uri)
    # Ordinary studies, seen from outside the kernel: the CLI and Study.load.
    env = {"STUDIES_DIR": str(tmp_path / "studies")}
    status = json.loads(run_cli("status", "seed002_study", "--json", env=env).stdout)
    study = search.Study.load("seed002_study", workdir=tmp_path / "studies")
    assert status["best_value"] == pytest.approx(study.best["value"])
    workers = {t.user_attrs["worker"].split("@")[0] for t in study.optuna_study().trials}
    assert workers <= {"w0", "w1"} and len(study.optuna_study().trials) == 3


def _check_outputs(tmp_path, loaded, searched, studied, evaluated):
    assert "(400, 32, 32, 3) uint8" in _out(loaded) and "airplane" in _out(loaded)
    lines = _out(searched).strip().splitlines()
    assert re.fullmatch(r"Best: [01]\.\d{6} using \{'optimizer': '\w+', 'neurons_second': \d+, 'activation': '\w+'\}",
                        lines[0]), lines
    assert len(lines) == 5 and all(re.fullmatch(r"\d\.\d{6} \(0\.000000\) with: \{'optimizer': .*\}", line)
                                   for line in lines[1:4]), lines
    assert re.fullmatch(r"refitted best: accuracy [01]\.\d{4} on 1000 images the search never saw", lines[4]), lines
    bar = _out(studied, "stderr")  # the progress bar, as a notebook shows it without ipywidgets
    assert "study seed002_study" in bar and "3/3" in bar and "best 0." in bar, bar[-1500:]
    assert "best: {'value': " in _out(studied) and "COMPLETE" in _out(studied) or "PRUNED" in _out(studied)
    printed = _out(evaluated)  # the 5 best (all, in a smoke study) confirmed, then the pick tested
    assert re.search(r"picked trial \d+ of [1-5] confirmed: .* test accuracy 0\.\d{4} on \d+ images", printed), printed
    assert printed.strip().endswith("reports/seed002_study/index.html")
    assert (tmp_path / "reports" / "seed002_study" / "index.html").is_file()
    assert (tmp_path / "studies" / "seed002_study.yaml").is_file()


def _check_mlflow(uri):
    """Both searches are runs with a nested run per trial; evaluate registered the final model."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cnn-search").experiment_id])
    trials = {}
    for run in runs:
        if run.data.tags.get("cnn_search.kind") == "trial":
            trials.setdefault(run.data.tags["cnn_search.study"], set()).add(run.data.tags["cnn_search.trial"])
    assert trials == {"seed002_searchcv": {"0", "1", "2"}, "seed002_study": {"0", "1", "2"}}
    version = client.get_model_version("seed002_study", "1")
    assert 0.0 <= float(version.tags["test_accuracy"]) <= 1.0
