"""TODO"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from helpers.compose import compose_config
from helpers.processes import REPO


def test_compose_file_is_valid_and_shaped_for_one_gpu_box(tmp_path):
    cfg = compose_config(tmp_path, STUDY="fc_head")
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
    assert worker["restart"] == "on-failure:3" and worker["init"] is True  # exit 2 is not restarted forever and worker["stop_grace_period"] == "15m"
    assert any(v.startswith("artifacts:/artifacts") for v in worker["volumes"])
    assert any(v.startswith("artifacts:/artifacts") for v in services["dashboard"]["volumes"])
    assert services["dashboard"]["ports"] == ["127.0.0.1:8080:8080/tcp"]
    from urllib.parse import urlsplit

    # Each service connects as its own role, with its own secret only (README, "Reliability", row 13).
    for name, user, secret in (("create-study", None, "postgres_password"), ("worker", "cnn_worker", "worker_password"),
                               ("dashboard", "cnn_dashboard", "dashboard_password")):
        env = services[name]["environment"]
        assert urlsplit(env["STORAGE"]).password is None, name  # the password comes from the secret file
        assert urlsplit(env["STORAGE"]).scheme == "journal+postgresql+psycopg2", name  # the service's layout
        assert env.get("STORAGE_USER") == user and env["STORAGE_PASSWORD_FILE"] == f"/run/secrets/{secret}", name
        mounted = {s["source"] for s in services[name]["secrets"]}
        assert secret in mounted and (name == "create-study" or mounted == {secret}), (name, mounted)
    create = services["create-study"]["environment"]
    assert (create["STORE_WORKER_ROLE"], create["STORE_DASHBOARD_ROLE"]) == ("cnn_worker", "cnn_dashboard")
    assert {s["source"] for s in services["create-study"]["secrets"]} == {
        "postgres_password", "worker_password", "dashboard_password"}

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
