"""Least-privilege roles made by the create step (issue: a cluster that lets no one in): workers may
only read and write rows, the dashboard only read (unless STORE_DASHBOARD_WRITES), each with a
password of its own; before, every component connected as the owner."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
import sqlalchemy
from helpers.processes import REPO

from storage import JOURNAL_PG_PREFIX, READER, WRITER, StorageConfigError, StoreRole, close_storage, ensure_roles
from storage import open_storage as _open


@pytest.fixture
def scratch(fresh_db, store_role_names, tmp_path):
    """A fresh database and two role names of this test's own, each with a password file
    tmp_path/<name>; all dropped afterwards (helpers.kube's fresh_db and store_role_names)."""
    worker, dashboard = store_role_names.names["cnn_worker"], store_role_names.names["cnn_dashboard"]
    for name in (worker, dashboard):
        (tmp_path / name).write_text(f"pw-{name}\n")
    return sqlalchemy.engine.make_url(fresh_db), worker, dashboard


def _as(url, role: str) -> str:
    return url.set(username=role).render_as_string(hide_password=False)


def _denied(action) -> None:
    """action fails for want of a privilege (Optuna's RDB store wraps the database's error: its cause says)."""
    with pytest.raises(Exception) as caught:
        action()
    chain, exc = [], caught.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("permission denied" in text or "must be owner" in text for text in chain), chain


@pytest.mark.parametrize("layout", ["journal", "rdb"])
def test_the_worker_role_reads_and_writes_rows_and_the_dashboard_role_only_reads(scratch, tmp_path, layout):
    url, worker, dashboard = scratch
    prefix = JOURNAL_PG_PREFIX if layout == "journal" else ""
    owner = prefix + url.render_as_string(hide_password=False)
    store = _open(owner, create_schema=True)
    optuna.create_study(study_name="guarded", storage=store).optimize(lambda t: t.suggest_float("x", 0, 1), 1)
    close_storage(store)
    roles = [("STORE_WORKER_ROLE", StoreRole(worker, tmp_path / worker, WRITER)),
             ("STORE_DASHBOARD_ROLE", StoreRole(dashboard, tmp_path / dashboard, READER))]
    assert ensure_roles(owner, roles) == [f"{worker} (reads and writes rows)", f"{dashboard} (reads)"]

    as_worker = _open(prefix + _as(url, worker))
    study = optuna.load_study(study_name="guarded", storage=as_worker)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), 2)  # what a worker does
    assert len(study.trials) == 3
    close_storage(as_worker)

    as_dashboard = _open(prefix + _as(url, dashboard))
    seen = optuna.load_study(study_name="guarded", storage=as_dashboard)
    assert len(seen.trials) == 3  # it reads everything
    _denied(lambda: seen.ask())  # and writes nothing
    close_storage(as_dashboard)

    probe = sqlalchemy.create_engine(_as(url, worker), poolclass=sqlalchemy.pool.NullPool)
    table = "cnn_search_journal" if layout == "journal" else "trials"
    for statement in ("create table intruder (x int)", f"alter table {table} add column intruder int",
                      f"drop table {table}", *(["delete from cnn_search_journal"] if layout == "journal" else [])):
        with probe.connect() as conn:
            _denied(lambda: conn.execute(sqlalchemy.text(statement)))
    probe.dispose()

    # Run again (a second create, a rotated password): the same grants, and the dashboard may write when asked.
    roles[1] = ("STORE_DASHBOARD_ROLE", StoreRole(dashboard, tmp_path / dashboard, WRITER))
    ensure_roles(owner, roles)
    as_dashboard = _open(prefix + _as(url, dashboard))
    optuna.load_study(study_name="guarded", storage=as_dashboard).ask()
    close_storage(as_dashboard)


def test_a_role_made_by_hand_is_brought_to_exactly_its_grants(scratch, tmp_path):
    url, worker, _ = scratch
    owner = JOURNAL_PG_PREFIX + url.render_as_string(hide_password=False)
    close_storage(_open(owner, create_schema=True))
    admin = sqlalchemy.create_engine(url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'create role "{worker}" login'))
        conn.execute(sqlalchemy.text(f'grant all on all tables in schema public to "{worker}"'))
    ensure_roles(owner, [("STORE_WORKER_ROLE", StoreRole(worker, tmp_path / worker, WRITER))])
    with admin.connect() as conn:
        held = conn.execute(sqlalchemy.text(
            "select table_name, string_agg(privilege_type, ',' order by privilege_type) from "
            "information_schema.role_table_grants where grantee = :r group by table_name order by table_name"),
            {"r": worker}).all()
        password_set = conn.execute(sqlalchemy.text("select rolpassword is not null from pg_authid where rolname = :r"),
                                    {"r": worker}).scalar_one()
    admin.dispose()
    assert [tuple(row) for row in held] == [("cnn_search_journal", "INSERT,SELECT"),
                                            ("cnn_search_journal_snapshot", "INSERT,SELECT,UPDATE")]
    assert password_set


def test_bad_role_settings_are_refused_before_the_store_is_touched(tmp_path):
    (tmp_path / "pw").write_text("secret\n")
    with pytest.raises(StorageConfigError, match="not PostgreSQL"):
        ensure_roles(f"journal://{tmp_path / 's.journal'}", [("STORE_WORKER_ROLE", StoreRole("w", tmp_path / "pw",
                                                                                             WRITER))])
    pg = "journal+postgresql+psycopg2://postgres@127.0.0.1:1/none"  # never reached: the checks come first
    for role, match in ((StoreRole("Robert'); drop", tmp_path / "pw", WRITER), "not a role name"),
                        (StoreRole("cnn_worker", tmp_path / "missing", WRITER), "cannot read it"),):
        with pytest.raises(StorageConfigError, match=match):
            ensure_roles(pg, [("STORE_WORKER_ROLE", role)])
    # The create command: a role asked of the embedded store fails, naming the setting; nothing is written.
    env = {**os.environ, "STORE_WORKER_ROLE": "cnn_worker", "STORE_WORKER_PASSWORD_FILE": str(tmp_path / "pw")}
    done = subprocess.run([sys.executable, "-m", "search", "create", "simple_cnn", "--storage",
                           f"journal://{tmp_path / 's.journal'}"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 2 and "STORE_WORKER_ROLE" in done.stderr and "not PostgreSQL" in done.stderr
    assert not (tmp_path / "s.journal").exists()
    env.pop("STORE_WORKER_PASSWORD_FILE")
    done = subprocess.run([sys.executable, "-m", "search", "create", "simple_cnn"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2 and "STORE_WORKER_PASSWORD_FILE" in done.stderr


def test_the_create_step_makes_the_roles_the_workers_then_use(scratch, tmp_path):
    url, worker, dashboard = scratch
    owner = JOURNAL_PG_PREFIX + url.render_as_string(hide_password=False)
    env = {**os.environ, "STORE_WORKER_ROLE": worker, "STORE_WORKER_PASSWORD_FILE": str(tmp_path / worker),
           "STORE_DASHBOARD_ROLE": dashboard, "STORE_DASHBOARD_PASSWORD_FILE": str(tmp_path / dashboard)}
    done = subprocess.run([sys.executable, "-m", "search", "create", "simple_cnn", "--storage", owner], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"store roles: {worker} (reads and writes rows), {dashboard} (reads)" in done.stdout
    as_worker = _open(JOURNAL_PG_PREFIX + _as(url, worker))
    assert optuna.load_study(study_name="simple_cnn", storage=as_worker).user_attrs  # the study, as the worker
    close_storage(as_worker)
