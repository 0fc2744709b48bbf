"""The settings: every environment variable declared once (search/settings.py), read once in main()."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers.processes import REPO

from search.settings import Settings, markdown_table


def compose_config(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search", "config", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_config_prints_the_effective_settings_with_the_password_redacted():
    run = compose_config(STORAGE="postgresql+psycopg2://optuna:hunter2@db:5432/optuna", GRACE_PERIOD="90",
                  WORKERS_PER_GPU="3")
    assert run.returncode == 0, run.stderr
    lines = dict(line.split("=", 1) for line in run.stdout.splitlines())
    assert lines["STORAGE"] == "postgresql+psycopg2://optuna:***@db:5432/optuna"
    assert lines["GRACE_PERIOD"] == "90.0" and lines["WORKERS_PER_GPU"] == "3" and lines["HEARTBEAT_INTERVAL"] == "10.0"
    assert "hunter2" not in run.stdout + run.stderr
    assert set(lines) == {name.upper() for name in Settings.model_fields}


def test_a_bad_value_is_refused_naming_the_variable():
    run = compose_config(GRACE_PERIOD="soon")
    assert run.returncode == 2 and "grace_period" in run.stderr and "valid number" in run.stderr, run.stderr


def test_empty_means_unset_except_for_cuda_visible_devices():
    settings = Settings.from_env({"WORKER_THREADS": "", "TRIALS": "", "DATA_DIR": "", "CUDA_VISIBLE_DEVICES": ""})
    assert settings.worker_threads == 0 and settings.trials is None and settings.data_dir is None
    assert settings.cuda_visible_devices == "-1"  # set but empty: no GPU, as CUDA reads it
    assert Settings.from_env({}).cuda_visible_devices is None  # unset: every GPU


def test_settings_are_frozen():
    settings = Settings.from_env({})
    with pytest.raises(ValueError):
        settings.grace_period = 1.0


def test_the_readme_table_is_the_declaration():
    readme = (REPO / "README.md").read_text()
    assert markdown_table() in readme, ("README.md's table of environment variables differs from "
                                        "search/settings.py; paste `python -m search config --markdown`")


def test_storage_user_connects_as_a_role_with_its_own_password(tmp_path):
    """One STORAGE (the owner's) for every pod; a worker or the dashboard connects as its role
    (STORAGE_USER) with its role's password file, never the owner's password (README, row 13)."""
    secret = tmp_path / "worker_password"
    secret.write_text("p@ss/word\n")
    settings = Settings(storage="journal+postgresql+psycopg2://optuna:owner-pw@db:5432/optuna?sslmode=verify-full",
                        storage_user="cnn_worker", storage_password_file=secret)
    assert settings.store_url() == ("journal+postgresql+psycopg2://cnn_worker:p%40ss%2Fword@db:5432/optuna"
                                    "?sslmode=verify-full")
    assert "owner-pw" not in settings.store_url()
    for other in ("grpcs://storage-proxy:13000?ca_file=/ca", f"journal://{tmp_path / 's.journal'}"):
        assert Settings(storage=other, storage_user="cnn_worker").store_url() == other  # no user to replace
    assert Settings(storage="postgresql+psycopg2://optuna@db/x").store_url() == "postgresql+psycopg2://optuna@db/x"
