"""TODO"""

from __future__ import annotations

import fcntl
import logging
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy
from helpers.processes import REPO
from helpers.synthetic import FEATURE_STUDY

from storage import advisory_key, advisory_lock, build_lock, lock_database, resolve_url

HOLD = """
import sys
from storage import advisory_lock
with advisory_lock(sys.argv[1], sys.argv[2], sys.argv[3]):
    print("held", flush=True)
    sys.stdin.readline()
"""

def _holder(database: str, kind: str, key: str) -> subprocess.Popen:
    """Another process holding the advisory lock on (kind, key) until its stdin gets a line."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, database, kind, key], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline() == "held\n"
    return proc

def _waiter(database: str, kind: str, key: str) -> tuple[threading.Event, threading.Event]:
    """This process taking the same lock in a thread: (got it, let it go)."""
    got, done = threading.Event(), threading.Event()

    def hold() -> None:
        with advisory_lock(database, kind, key, wait_slice_s=0.2):
            got.set()
            done.wait(30)

    threading.Thread(target=hold, daemon=True).start()
    return got, done

def _held_elsewhere(database: str, kind: str, key: str) -> bool:
    engine = sqlalchemy.create_engine(database, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            free = conn.exec_driver_sql("SELECT pg_try_advisory_lock(%s)", (advisory_key(kind, key),)).scalar()
            if free:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (advisory_key(kind, key),))
            return not free
    finally:
        engine.dispose()

def test_the_lock_database_is_the_postgresql_store_without_its_journal_prefix():
    pg = "postgresql+psycopg2://u:p@db:5432/optuna?options=-csearch_path%3Dteam_b"
    assert lock_database(f"journal+{pg}") == pg
    assert lock_database(pg) == pg
    for other in (resolve_url(None), "journal:///tmp/x.journal", "grpc://proxy:13000", "sqlite:///x.db", "", None):
        assert lock_database(other) is None, other
    assert advisory_key("bases", "k") == advisory_key("bases", "k") != advisory_key("features", "k")
    assert -2**63 <= advisory_key("bases", "k") < 2**63

def test_two_processes_on_one_advisory_key_take_turns(journal_pg_url, caplog):
    database, key = lock_database(journal_pg_url), uuid.uuid4().hex
    holder = _holder(database, "bases", key)
    try:
        with caplog.at_level(logging.INFO, logger="storage._locks"):
            got, done = _waiter(database, "bases", key)
            assert not got.wait(1.0)  # the other process holds it
            with advisory_lock(database, "bases", f"{key}-other"):
                pass  # another entry's lock is not held up
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.wait(10) == 0
            assert got.wait(5)
        assert f"waiting for the build lock on bases/{key}" in caplog.text
        assert f"got the build lock on bases/{key}" in caplog.text
        assert _held_elsewhere(database, "bases", key)
        done.set()
        deadline = time.monotonic() + 5
        while _held_elsewhere(database, "bases", key):
            assert time.monotonic() < deadline, "the lock outlived its block"
            time.sleep(0.05)
    finally:
        holder.kill()

def test_a_sigkilled_holder_releases_the_lock_at_once(postgres_url):
    key = uuid.uuid4().hex
    holder = _holder(postgres_url, "features", key)
    got, done = _waiter(postgres_url, "features", key)
    try:
        assert not got.wait(0.5)
        killed = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(5) == -signal.SIGKILL
        assert got.wait(5)
        assert time.monotonic() - killed < 3  # PostgreSQL ends the dead session's lock, no timeout involved
    finally:
        done.set()
        holder.kill()

@pytest.mark.parametrize("store", ["", "journal:///studies.journal", "grpc://127.0.0.1:1", "sqlite:///x.db"])
def test_stores_without_a_database_connection_get_the_file_lock(tmp_path, store):
    folder = tmp_path / "cache" / "bases" / "k"
    lock_file = Path(f"{folder}.lock")
    with build_lock(resolve_url(store), "bases", "k", folder):
        with open(lock_file) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock_file) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released

def test_a_postgresql_store_takes_the_advisory_lock_and_no_file_lock(tmp_path, journal_pg_url):
    folder, key = tmp_path / "cache" / "bases" / "k", uuid.uuid4().hex
    with build_lock(journal_pg_url, "bases", key, folder):
        assert _held_elsewhere(lock_database(journal_pg_url), "bases", key)
    assert not _held_elsewhere(lock_database(journal_pg_url), "bases", key)
    assert not list(tmp_path.rglob("*.lock"))

def test_a_builder_takes_no_unfinished_file_for_a_finished_one_and_clears_them(journal_pg_url, caplog):
    from helpers.synthetic import easy_splits

    from search import parse_spec
    from search.trial._features import base_key, ensure_base
    from storage import cache_path

    spec, splits = parse_spec(FEATURE_STUDY, name="feat"), easy_splits(100, 50)
    folder = cache_path("bases", base_key(spec, splits))
    folder.mkdir(parents=True)
    left = folder / ".tmp-deadhost-1-0badf00d.weights.h5"  # a builder killed while writing the weights
    left.write_bytes(b"\x89HDF\r\n half")
    with caplog.at_level(logging.INFO, logger="search.trial._features"):
        weights = ensure_base(spec, splits, store_url=journal_pg_url)
    assert "training the s000_model_3_1 base once" in caplog.text
    assert "removed 1 unfinished file(s) a killed builder left" in caplog.text
    assert weights == folder / "base.weights.h5" and weights.stat().st_size > 100_000
    assert sorted(p.name for p in folder.iterdir()) == ["base.json", "base.weights.h5"]
    assert not list(Path.cwd().rglob("*.lock"))  # the PostgreSQL store took no file lock
