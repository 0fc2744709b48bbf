"""docker-compose.yml's service commands run as plain processes against the local PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import optuna
import pytest
from helpers.compose import compose_config
from helpers.processes import REPO, free_port


def test_service_commands_run_as_plain_processes(tmp_path, journal_pg_url, shared_datasets, shared_cache):
    name = f"compose_{uuid.uuid4().hex[:8]}"
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / f"{name}.yaml").write_text((REPO / "search/studies/mnist_cnn.yaml").read_text())
    (tmp_path / "cfg").mkdir()
    services = compose_config(tmp_path / "cfg", STUDY=name)["services"]
    store_url = journal_pg_url  # the compose file's layout (checked above), on the local server
    env = {**os.environ, "STORAGE": store_url, "STUDIES_DIR": str(studies), "DATA_DIR": str(shared_datasets),
           "DATA_CACHE": str(shared_cache), "ARTIFACTS_DIR": str(tmp_path / "artifacts"), "PROFILE": "smoke",
           "TRIALS": "2", "EPOCHS": "1"}
    env.pop("STORAGE_PASSWORD_FILE", None)

    def local(command: list[str]) -> list[str]:  # the image's python is this interpreter here
        return [sys.executable if part == "python" else part for part in command]

    try:
        create = subprocess.run(local(services["create-study"]["command"]), env=env, capture_output=True, text=True,
                                timeout=120, cwd=REPO)
        assert create.returncode == 0, create.stderr
        worker = subprocess.run(local(services["worker"]["command"]), env=env, capture_output=True, text=True,
                                timeout=600, cwd=REPO)
        assert worker.returncode == 0, worker.stderr[-3000:]
        port = free_port()
        command = [c if c != "0.0.0.0" else "127.0.0.1" for c in local(services["dashboard"]["command"])]
        command[command.index("--port") + 1] = str(port)
        dashboard = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(120):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                        names = [s["study_name"] for s in json.loads(r.read())["study_summaries"]]
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                pytest.fail("the dashboard did not answer")
            assert name in names
        finally:
            dashboard.terminate()
            dashboard.wait(timeout=20)
        from storage import open_storage

        study = optuna.load_study(study_name=name, storage=open_storage(store_url))
        assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2
    finally:
        import contextlib

        from storage import open_storage

        with contextlib.suppress(KeyError):  # the study may not have been created
            optuna.delete_study(study_name=name, storage=open_storage(store_url))
