"""Shared fixtures, and the tiers' markers. Tests never touch the network: downloads are off (DATA_OFFLINE=1).

Markers are applied here, never by hand: `postgres` to every test that uses the PostgreSQL server
(the `postgres_url` fixture, directly or through another fixture; a fixture that asks for it only
for some of its params marks those params), `browser` to every test that uses
headless Chromium (the `chromium` fixture), and `slow` to every test under tests/e2e/ (whole studies,
many processes). `make test-fast` deselects all three and runs with no service running. Of the slow
ones, the fault matrix is also `serial` (FAULT_FILES: they stop PostgreSQL, kill workers and time
heartbeats against a grace period), which `make test` runs alone; the other studies share both cores.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["DATA_OFFLINE"] = "1"

import pytest
from helpers.kube import base, fresh_db, store_role_names  # noqa: F401 - fixtures shared by deploy/ and e2e/

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


E2E = Path(__file__).resolve().parent / "e2e"
FAULT_FILES = {"test_service.py", "test_faults.py", "test_kubernetes_jobs.py", "test_build_across_machines.py",
               "test_object_store.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "postgres_url" in fixtures:
            item.add_marker(pytest.mark.postgres)
        if "chromium" in fixtures:
            item.add_marker(pytest.mark.browser)
        if E2E in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
            if Path(item.path).name in FAULT_FILES:
                item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium (`make test` installs it); missing, the test fails, never skips."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("headless Chromium is needed: `make test` installs Debian's chromium (apt-get install chromium)")
    return path


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """Each test runs in a working directory of its own, so the defaults relative to it (the data
    cache .cache/data, ./artifacts, the embedded studies.journal) are its own; DATA_DIR and STORAGE
    unset, and a data cache of its own for the worker processes it starts."""
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.delenv("STORAGE", raising=False)
    monkeypatch.setenv("DATA_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One cache for the real datasets, decoded once per test session: shared by its xdist workers
    (the loader publishes a decoded dataset atomically, so two that decode at once both end well)."""
    root = tmp_path_factory.getbasetemp()
    folder = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "shared-cache"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not (SHARED_DATASETS / "cifar10-jpg.tar.gz").is_file():
        pytest.fail(f"the real datasets are missing: expected {SHARED_DATASETS}/cifar10-jpg.tar.gz and mnist.npz "
                    "(../shared/datasets beside the repository)")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test database. A missing server fails the suite loudly; it never skips."""
    url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        engine.dispose()
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {url} is not reachable ({exc}); start it (see README, 'Tests') "
                    "or set TEST_POSTGRES_URL")
    return url


@pytest.fixture
def journal_pg_url(postgres_url):
    """The service's PostgreSQL journal store on the test database, in a schema of its own that is
    dropped afterwards (every process replays the whole journal table, so tests do not share one)."""
    from storage._journal_pg import journal_in_scratch_schema

    with journal_in_scratch_schema(postgres_url) as url:
        yield url
