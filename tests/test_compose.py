"""docker-compose.yml: validated by Debian's docker-compose, its services' commands run as plain
processes against the local PostgreSQL, and nothing secret or exposed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, **env: str) -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is needed to validate the compose file: apt-get install docker-compose")
    for name in ("docker-compose.yml", "Dockerfile"):
        shutil.copy(REPO / name, tmp_path / name)
    result = subprocess.run([exe, "-f", str(tmp_path / "docker-compose.yml"), "config"], capture_output=True,
                            text=True, env={**os.environ, **env}, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid_and_shaped_for_one_gpu_box(tmp_path):
    cfg = _config(tmp_path, STUDY="fc_head")
    services = cfg["services"]
    assert set(services) == {"postgres", "create-study", "worker", "dashboard"}
    pg = services["postgres"]
    assert "ports" not in pg  # only on the compose network
    assert pg["healthcheck"]["test"][1].startswith("pg_isready")
    assert "pgdata" in pg["volumes"][0] and pg["environment"]["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")
    assert services["create-study"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["create-study"]["command"][-2:] == ["create", "fc_head"]
    worker = services["worker"]
    assert worker["depends_on"]["create-study"]["condition"] == "service_completed_successfully"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert worker["restart"] == "on-failure" and worker["init"] is True and worker["stop_grace_period"] == "15m"
    assert any(v.startswith("artifacts:/artifacts") for v in worker["volumes"])
    assert any(v.startswith("artifacts:/artifacts") for v in services["dashboard"]["volumes"])
    assert services["dashboard"]["ports"] == ["127.0.0.1:8080:8080/tcp"]
    from urllib.parse import urlsplit

    for name in ("create-study", "worker", "dashboard"):
        env = services[name]["environment"]
        assert urlsplit(env["STORAGE"]).password is None, name  # the password comes from the secret file
        assert urlsplit(env["STORAGE"]).scheme == "journal+postgresql+psycopg2", name  # the service's layout
        assert env["STORAGE_PASSWORD_FILE"] == "/run/secrets/postgres_password"


def test_required_variables_fail_loudly(tmp_path):
    exe = shutil.which("docker-compose") or pytest.fail("docker-compose missing")
    shutil.copy(REPO / "docker-compose.yml", tmp_path / "docker-compose.yml")
    env = {k: v for k, v in os.environ.items() if k != "STUDY"}
    result = subprocess.run([exe, "config"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert result.returncode != 0 and "set STUDY in .env" in result.stderr


def test_no_secret_or_env_file_is_tracked():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert ".env" not in tracked and ".env.example" in tracked
    assert not [f for f in tracked if f.startswith("secrets/")]
    import re

    for name in (".env.example", "Dockerfile", "docker-compose.yml"):
        text = (REPO / name).read_text()
        assert not re.search(r"PASSWORD[ \t]*[=:][ \t]*[^\s/$]", text.upper().replace("_FILE", "")), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_service_commands_run_as_plain_processes(tmp_path, journal_pg_url, shared_datasets, shared_cache):
    name = f"compose_{uuid.uuid4().hex[:8]}"
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / f"{name}.yaml").write_text((REPO / "search/studies/mnist_cnn.yaml").read_text())
    (tmp_path / "cfg").mkdir()
    services = _config(tmp_path / "cfg", STUDY=name)["services"]
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
        port = _free_port()
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
