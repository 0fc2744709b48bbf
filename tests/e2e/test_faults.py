"""The fault matrix's load and privilege rows on the real PostgreSQL (README, "Reliability").

Workers here are tests/trivial_worker.py: the service's own ask/tell loop, heartbeat and reaper
around a trivial objective, so that 32 of them fit on a 2-core machine.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from helpers.processes import REPO
from optuna.trial import TrialState

from storage import JOURNAL_PG_PREFIX, WRITER, StoreRole, close_storage, ensure_roles, open_storage
from storage._rdb import APPLICATION_NAME, MAX_OVERFLOW, POOL_SIZE

WORKER = REPO / "tests" / "helpers" / "trivial_worker.py"


def _start(url: str, name: str, index: int, budget: int, logs: Path) -> subprocess.Popen:
    log = open(logs / f"t{index}.log", "w")
    return subprocess.Popen([sys.executable, str(WORKER), url, name, str(index), str(budget)],
                            stdout=log, stderr=subprocess.STDOUT)


class ConnectionWatch(threading.Thread):
    """Samples how many sessions the service holds on the database (by application_name), leaving
    out those already open when the watch was made: stores this test process opened earlier (the
    contract tests') that the garbage collector has not closed yet."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        self.peak, self.samples = 0, 0
        self.done = threading.Event()
        with self.engine.connect() as conn:
            self.before = conn.execute(sqlalchemy.text(
                "select coalesce(array_agg(pid), '{}') from pg_stat_activity where application_name = :app "
                "and datname = current_database()"), {"app": APPLICATION_NAME}).scalar_one()

    def run(self) -> None:
        query = sqlalchemy.text("select count(*) from pg_stat_activity where application_name = :app "
                                "and datname = current_database() and pid <> all(cast(:before as int[]))")
        with self.engine.connect() as conn:
            while not self.done.wait(0.2):
                self.peak = max(self.peak, conn.execute(query, {"app": APPLICATION_NAME,
                                                                "before": list(self.before)}).scalar_one())
                conn.commit()
                self.samples += 1

    def stop(self) -> int:
        self.done.set()
        self.join(10)
        self.engine.dispose()
        return self.peak


@pytest.mark.parametrize("layout", ["journal", "rdb"])
def test_32_workers_x_25_trials_plus_40_enqueued(layout, request, postgres_url, tmp_path):
    workers, per_worker, n_enqueued = 32, 25, 40
    budget = workers * per_worker + n_enqueued
    name = f"load_{uuid.uuid4().hex[:8]}"
    store_url = request.getfixturevalue("journal_pg_url") if layout == "journal" else postgres_url
    storage = open_storage(store_url, create_schema=True)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    enqueued = [-10 + 0.5 * i for i in range(n_enqueued)]
    for x in enqueued:
        study.enqueue_trial({"x": x})
    close_storage(storage)  # from here on every service session on the database is a worker's
    watch = ConnectionWatch(postgres_url)
    watch.start()
    try:
        procs = [_start(store_url, name, i, budget, tmp_path) for i in range(workers)]
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        peak = watch.stop()
    logs = {i: (tmp_path / f"t{i}.log").read_text() for i in range(workers)}
    assert codes == [0] * workers, {i: log[-1500:] for i, log in logs.items() if codes[i]}
    noisy = {i: log[-1500:] for i, log in logs.items() if "Traceback" in log or "rror" in log}
    assert not noisy, noisy  # no deadlock, no storage error, not even a retried one

    trials = optuna.load_study(study_name=name, storage=open_storage(store_url)).trials
    assert [t.number for t in trials] == list(range(len(trials)))  # unique and contiguous
    assert budget <= len(trials) <= budget + workers - 1
    assert all(t.state == TrialState.COMPLETE for t in trials)
    ran = sorted(t.params["x"] for t in trials if "fixed_params" in t.system_attrs)
    assert ran == enqueued  # each enqueued trial ran exactly once
    # The connection budget (README), whatever a worker's threads do: one connection on the journal
    # layout, POOL_SIZE + MAX_OVERFLOW on the RDB layout.
    assert watch.samples > 10
    assert 0 < peak <= workers * (1 if layout == "journal" else POOL_SIZE + MAX_OVERFLOW), peak


@pytest.fixture
def scratch_database(postgres_url):
    """A fresh database on the test server, dropped afterwards (with the role the test made)."""
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    db = f"cnn_search_lp_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'create database "{db}"'))
    url = sqlalchemy.engine.make_url(postgres_url).set(database=db)
    made_roles: list[str] = []
    yield url, made_roles
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'drop database "{db}" with (force)'))
        for role in made_roles:
            conn.execute(sqlalchemy.text(f'drop role if exists "{role}"'))
    admin.dispose()


@pytest.mark.parametrize("layout", ["journal", "rdb"])
def test_workers_run_with_a_role_that_may_only_read_and_write_rows(layout, scratch_database, tmp_path):
    url, roles = scratch_database
    prefix = JOURNAL_PG_PREFIX if layout == "journal" else ""
    owner_url = url.render_as_string(hide_password=False)
    name = "least_privilege"
    storage = open_storage(prefix + owner_url, create_schema=True)  # the one-shot create step, as the owner
    optuna.create_study(study_name=name, storage=storage, direction="minimize")
    close_storage(storage)
    tables = ("cnn_search_journal",) if layout == "journal" else ("trials", "trial_values")

    role = f"cnn_worker_{uuid.uuid4().hex[:6]}"
    roles.append(role)
    (tmp_path / "worker_password").write_text("placeholder\n")  # trust auth here: kept, not checked
    # What the create step does with STORE_WORKER_ROLE set (storage._roles); the journal layout: the
    # log only appended and read, snapshots written.
    ensure_roles(prefix + owner_url, [("STORE_WORKER_ROLE", StoreRole(role, tmp_path / "worker_password", WRITER))])
    worker_url = url.set(username=role).render_as_string(hide_password=False)

    # The role really is DML-only: it can neither create, alter nor drop.
    probe = sqlalchemy.create_engine(worker_url, poolclass=sqlalchemy.pool.NullPool)
    for ddl in ("create table intruder (x int)", f"alter table {tables[0]} add column intruder int",
                f"drop table {tables[-1]}"):
        with probe.connect() as conn, pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied|must be owner"):
            conn.execute(sqlalchemy.text(ddl))
    if layout == "journal":  # nor rewrite or erase the log
        for dml in ("update cnn_search_journal set log = '{}'", "delete from cnn_search_journal"):
            with probe.connect() as conn, pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"):
                conn.execute(sqlalchemy.text(dml))
    probe.dispose()

    procs = [_start(prefix + worker_url, name, i, 12, tmp_path) for i in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0], [(tmp_path / f"t{i}.log").read_text()[-1500:] for i in range(2)]
    trials = optuna.load_study(study_name=name, storage=open_storage(prefix + owner_url)).trials
    assert 12 <= len(trials) <= 13 and all(t.state == TrialState.COMPLETE for t in trials)
