"""Journal snapshots on PostgreSQL (storage/_journal_pg.py): a process that opens the store loads the
latest snapshot and replays only the logs after it, and ends up with exactly what a full replay
gives; a snapshot it cannot trust is ignored, with a warning, for a full replay; concurrent savers
leave one consistent snapshot, never an older one over a newer one."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import pathlib
import pickle
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from storage import JOURNAL_PG_PREFIX, _journal_pg, close_storage, open_storage
from storage._journal_pg import SNAPSHOT_TABLE, PostgresJournalBackend, snapshot_format

STATES = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


def _plain(url: str) -> str:
    return url[len(JOURNAL_PG_PREFIX):]


def _fill(study: optuna.Study, storage: Any, n: int, start: int = 0) -> None:
    """n trials of every shape a worker writes: params of each kind, epoch reports, user and system
    attributes (through storage, the study's store), each finished state."""
    for i in range(start, start + n):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_int("depth", 1, 8)
        trial.suggest_categorical("optimizer", ["adam", "sgd", None])
        trial.report(i / 1000, step=0)
        trial.set_user_attr("worker", f"w{i % 3}")
        storage.set_trial_system_attr(trial._trial_id, "cnn_search:heartbeat", float(i))
        state = STATES[i % 3]
        study.tell(trial, float(i) if state == TrialState.COMPLETE else None, state=state)


def _snapshot_row(url: str) -> tuple[int, str, bytes, bytes] | None:
    engine = sqlalchemy.create_engine(_plain(url), poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        row = conn.exec_driver_sql(f"SELECT log_number, format, sha256, snapshot FROM {SNAPSHOT_TABLE}").first()
    engine.dispose()
    return None if row is None else (row[0], row[1], bytes(row[2]), bytes(row[3]))


def _sql(url: str, statement: str, params: dict[str, Any] | None = None) -> None:
    engine = sqlalchemy.create_engine(_plain(url), poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(statement, params or {})
    engine.dispose()


def _open(url: str, monkeypatch: pytest.MonkeyPatch, *, snapshots: bool = True) -> tuple[Any, int]:
    """A fresh store, and the log number its first read started from (0: a full replay)."""
    reads: list[int] = []
    original = PostgresJournalBackend.read_logs

    def read_logs(self: PostgresJournalBackend, log_number_from: int) -> Any:
        reads.append(log_number_from)
        return original(self, log_number_from)

    monkeypatch.setattr(PostgresJournalBackend, "read_logs", read_logs)
    backend = PostgresJournalBackend(_plain(url), snapshots=snapshots)
    storage = optuna.storages.JournalStorage(backend)
    monkeypatch.undo()
    return storage, reads[0]


def _contents(storage: Any) -> list[Any]:
    studies = storage.get_all_studies()
    return [(s, storage.get_all_trials(s._study_id, deepcopy=False)) for s in studies]


def _same_as_a_full_replay(url: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Open from the snapshot and by a full replay; both must hold the same studies and trials.
    Returns the log number the snapshot let the first open start from."""
    from_snapshot, started_at = _open(url, monkeypatch)
    replayed, replayed_from = _open(url, monkeypatch, snapshots=False)
    assert replayed_from == 0
    assert _contents(from_snapshot) == _contents(replayed)
    return started_at


@pytest.fixture
def filled(journal_pg_url: str) -> tuple[optuna.Study, Any]:
    storage = open_storage(journal_pg_url, create_schema=True)
    study = optuna.create_study(study_name="snap", storage=storage)
    study.set_user_attr("budget", 500)
    _fill(study, storage, 205)  # Optuna saves a snapshot as trials 100 and 200 are created
    return study, storage


def test_a_store_opened_from_its_snapshot_holds_the_same_trials_as_a_full_replay(journal_pg_url, filled, monkeypatch):
    row = _snapshot_row(journal_pg_url)
    assert row is not None and row[1] == snapshot_format()
    log_number, _, sha256, data = row
    assert hashlib.sha256(data).digest() == sha256
    assert pickle.loads(data).log_number_read == log_number  # it claims exactly the logs it holds
    assert _same_as_a_full_replay(journal_pg_url, monkeypatch) == log_number > 0
    study = optuna.load_study(study_name="snap", storage=open_storage(journal_pg_url))
    assert len(study.trials) == 205 and study.user_attrs == {"budget": 500}
    assert {t.state for t in study.trials} == set(STATES)


def test_logs_appended_after_the_snapshot_are_replayed(journal_pg_url, filled, monkeypatch):
    study, storage = filled
    log_number = _snapshot_row(journal_pg_url)[0]
    running = study.ask()
    running.suggest_float("lr", 1e-4, 1e-1, log=True)
    _fill(study, storage, 20, start=205)
    study.enqueue_trial({"lr": 0.01, "depth": 2, "optimizer": "adam"})
    study.set_user_attr("budget", 600)
    optuna.create_study(study_name="second", storage=storage, direction="maximize")
    assert _snapshot_row(journal_pg_url)[0] == log_number  # no new snapshot: these are replayed
    assert _same_as_a_full_replay(journal_pg_url, monkeypatch) == log_number
    study = optuna.load_study(study_name="snap", storage=open_storage(journal_pg_url))
    assert len(study.trials) == 227 and study.user_attrs["budget"] == 600
    assert [t.state for t in study.trials[-2:]] == [TrialState.PRUNED, TrialState.WAITING]
    assert study.trials[205].state == TrialState.RUNNING and "lr" in study.trials[205].params


class _Reduced:
    """A pickle that would run a function when unpickled: create a file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return pathlib.Path.touch, (self.marker,)


def _corrupt(mode: str, row: tuple[int, str, bytes, bytes], marker: pathlib.Path) -> dict[str, Any]:
    """The snapshot row's new columns, written as someone with access to the table would."""
    n, fmt, sha256, data = row
    if mode == "flipped byte":
        return {"snapshot": data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]}
    if mode == "truncated":
        return {"snapshot": data[:-10], "sha256": hashlib.sha256(data[:-10]).digest()}
    if mode == "another optuna":
        return {"format": "optuna 4.2.0, python 3.11"}
    if mode == "claims logs the journal lacks":
        return {"log_number": 10**9}
    if mode == "holds more logs than it claims":
        return {"log_number": n - 1}
    evil = pickle.dumps(_Reduced(marker))  # "a class outside Optuna's state", checksum and all
    return {"snapshot": evil, "sha256": hashlib.sha256(evil).digest()}


@pytest.mark.parametrize("mode", ["flipped byte", "truncated", "another optuna", "claims logs the journal lacks",
                                  "holds more logs than it claims", "a class outside Optuna's state"])
def test_a_snapshot_that_cannot_be_trusted_falls_back_to_a_full_replay(journal_pg_url, filled, monkeypatch, caplog,
                                                                      tmp_path, mode):
    marker = tmp_path / "the snapshot ran code"
    columns = _corrupt(mode, _snapshot_row(journal_pg_url), marker)
    assignments = ", ".join(f"{k} = %({k})s" for k in columns)
    _sql(journal_pg_url, f"UPDATE {SNAPSHOT_TABLE} SET {assignments}", columns)
    with caplog.at_level(logging.WARNING, logger=_journal_pg.__name__):
        assert _same_as_a_full_replay(journal_pg_url, monkeypatch) == 0
    assert "not using the journal snapshot" in caplog.text and "replaying the whole journal" in caplog.text
    assert not marker.exists()
    study = optuna.load_study(study_name="snap", storage=open_storage(journal_pg_url))
    assert len(study.trials) == 205


def test_an_older_snapshot_never_replaces_a_newer_one(journal_pg_url, filled):
    study, storage = filled
    late = PostgresJournalBackend(_plain(journal_pg_url), snapshot_min_growth=0)
    late.read_logs(0)  # a process that read the log, then was slow to save its snapshot
    _fill(study, storage, 96, start=205)  # meanwhile trial 300 saved a newer one
    newer = _snapshot_row(journal_pg_url)
    late.save_snapshot(pickle.dumps("older than the stored one"))
    assert _snapshot_row(journal_pg_url) == newer
    # The upsert itself, as a writer that passed that check just before a newer one landed runs it.
    stale = {"n": newer[0] - 50, "format": snapshot_format(), "sha256": b"x", "snapshot": b"\x80stale."}
    _sql(journal_pg_url, _journal_pg._SNAPSHOT_SAVE, stale)
    assert _snapshot_row(journal_pg_url) == newer
    # One that claims logs the journal lacks (an older backup restored) is replaced by any valid one.
    _sql(journal_pg_url, f"UPDATE {SNAPSHOT_TABLE} SET log_number = 10^9")
    _sql(journal_pg_url, _journal_pg._SNAPSHOT_SAVE, stale)
    assert _snapshot_row(journal_pg_url)[0] == stale["n"]
    late.close()


def _save_snapshots_while_appending(url: str, barrier: Any, trials: int, out: Any) -> None:
    """A worker that saves Optuna's snapshot after every trial it creates, and reports the log
    number of each snapshot it handed over."""
    import optuna.storages.journal._storage as journal_storage

    journal_storage.SNAPSHOT_INTERVAL = 1  # Optuna's own save path, every trial instead of every 100th
    saved: list[int] = []

    class Recording(PostgresJournalBackend):
        def save_snapshot(self, snapshot: bytes) -> None:
            saved.append(pickle.loads(snapshot).log_number_read)
            super().save_snapshot(snapshot)

    backend = Recording(_plain(url), snapshot_min_growth=0)
    study = optuna.load_study(study_name="race", storage=optuna.storages.JournalStorage(backend))
    barrier.wait()
    for _ in range(trials):
        study.tell(study.ask(), 1.0)
    out.put(saved)


def test_two_processes_saving_snapshots_at_once_leave_a_consistent_one(journal_pg_url, monkeypatch):
    storage = open_storage(journal_pg_url, create_schema=True)
    optuna.create_study(study_name="race", storage=storage)
    close_storage(storage)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_save_snapshots_while_appending, args=(journal_pg_url, barrier, 60, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    saved = out.get(timeout=240) + out.get(timeout=240)
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0] and len(saved) == 119  # every trial but trial 0
    log_number, fmt, sha256, data = _snapshot_row(journal_pg_url)
    assert log_number == max(saved)  # the newest won, whatever order the writes landed in
    assert hashlib.sha256(data).digest() == sha256 and pickle.loads(data).log_number_read == log_number
    assert _same_as_a_full_replay(journal_pg_url, monkeypatch) == log_number
    study = optuna.load_study(study_name="race", storage=open_storage(journal_pg_url))
    assert len(study.trials) == 120 and all(t.state == TrialState.COMPLETE for t in study.trials)


def test_a_database_made_before_snapshots_works_without_them(journal_pg_url, monkeypatch, caplog):
    storage = open_storage(journal_pg_url, create_schema=True)
    optuna.create_study(study_name="old", storage=storage)
    close_storage(storage)
    _sql(journal_pg_url, f"DROP TABLE {SNAPSHOT_TABLE}")
    with caplog.at_level(logging.WARNING, logger=_journal_pg.__name__):
        reopened = open_storage(journal_pg_url)
        _fill(optuna.load_study(study_name="old", storage=reopened), reopened, 101)  # trial 100 would save a snapshot: it is skipped, the trial is not
    assert "cannot read the journal snapshot" in caplog.text
    assert len(optuna.load_study(study_name="old", storage=open_storage(journal_pg_url)).trials) == 101
