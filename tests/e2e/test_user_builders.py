"""A study of a user's own builder run end to end with two workers on MNIST, then an edited builder refused."""

from __future__ import annotations

import json

from helpers.builders import NET, builder_file, study
from helpers.processes import run_cli


def test_run_two_workers_with_a_builder_on_mnist_then_refuse_an_edited_builder(tmp_path, shared_datasets,
                                                                                 shared_cache):
    studies = tmp_path / "studies"
    studies.mkdir()
    ref = builder_file(tmp_path / "models_dir")
    (studies / "own.yaml").write_text(study(ref, "  filters: {choices: [4, 8]}\n  dense_units: {low: 8, high: 32}\n")
                                      .replace("cifar10", "mnist").replace("pruner: none", "pruner: hyperband"))
    store = f"journal://{tmp_path / 's.journal'}"
    env = {"DATA_DIR": str(shared_datasets), "DATA_CACHE": str(shared_cache), "STUDIES_DIR": str(studies),
           "ARTIFACTS_DIR": str(tmp_path / "artifacts"), "STORAGE": store}
    smoke = ("--profile", "smoke", "--trials", "3", "--epochs", "1")
    run = run_cli("run", "own", "--workers", "2", *smoke, "--poll", "0.5", env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[study own] 3/3 finished: 3 complete" in run.stdout
    assert "Traceback" not in run.stderr
    status = json.loads(run_cli("status", "own", "--json", env=env).stdout)
    assert status["n_complete"] == 3 and 0.5 < status["best_value"] <= 1
    assert set(status["best_params"]) == {"filters", "dense_units", "learning_rate"}
    (tmp_path / "models_dir" / "net.py").write_text(NET.replace("dropout=0.1", "dropout=0.2"))
    again = run_cli("run", "own", "--workers", "1", *smoke, env=env, timeout=300)
    assert again.returncode == 2
    assert f"builder_files: study has {{\"{ref}\": \"sha256:" in again.stderr and "refusing to join" in again.stderr
