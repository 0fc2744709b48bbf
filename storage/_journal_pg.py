"""Optuna's JournalStorage with its log in a PostgreSQL table (SQLAlchemy + psycopg2).

Why: Optuna's RDBStorage costs 35 SQL statements and 7 commits for one ask + suggest + tell, and 8
such clients on 2 cores missed the latency goals by 2x (BENCHMARKS.md). A journal store keeps the
study in memory in every process and talks to the database only to append an operation and read
the operations other processes appended: two round trips per operation, one statement each.

Optuna ships the journal (optuna.storages.JournalStorage) and its backend interface
(BaseJournalBackend: read_logs / append_logs, with log numbers 0, 1, 2, ... without gaps); it ships
file and Redis backends, not a SQL one. This is that backend:

- one table holds the log of every study, `id` the log number, each log the JSON text Optuna's file
  journal writes (json.dumps: NaN and Infinity kept); every process loads every study of the table
  when it opens the store (from the snapshot, then the logs after it), so keep unrelated work in
  another schema (`?options=-csearch_path%3Dname` in the URL), which has its own tables and lock;
- an append takes a transaction-scoped advisory lock, numbers its logs from MAX(id) + 1 and
  commits, all in one round trip; the lock serialises appends, so a log is visible only after every
  log numbered before it (a reader that sees id N also sees ids below N) and numbers have no gaps;
- a reader returns only a gap-free run from the number asked for, as a second guard;
- every append carries a batch id, and writes nothing when that batch is in the table already (looked
  for under the append lock): when the connection breaks while the append is in flight, the
  backend reconnects and looks for that batch before writing it again, so a database restart never
  duplicates an operation (a duplicated "create trial" would be a phantom trial); likewise the read
  that follows an append waits through an outage (JOURNAL_SETTLE_DEADLINE, 120 s) rather than fail
  an operation that was written, which its caller would then repeat;
- a broken connection is replaced on the next call: no pre-ping round trip on every call;
- snapshots (Optuna's optional BaseJournalSnapshot): the process that creates every 100th trial
  hands over its whole replayed state, pickled; it is kept in one row of a second table, and a
  process that opens the store loads it and replays only the logs written after it. See
  "Snapshots" below.

The schema (two tables and an index) is created only by the create step (`make study`, the
create-study service); workers fail closed on a database without the journal table, as they do
for the RDB layout. A database made before snapshots existed works without them (every open
replays the whole log) until the create step runs again and adds the snapshot table.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import pickle
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.storages.journal import BaseJournalBackend

# Not exported by optuna.storages.journal (5.0), yet the class JournalStorage checks for with
# isinstance before it loads or saves a snapshot; its Redis backend imports it from here too.
from optuna.storages.journal._base import BaseJournalSnapshot

from storage._errors import StorageUnavailableError
from storage._urls import JOURNAL_PG_PREFIX, PG_KEEPALIVES, redact, with_search_path

logger = logging.getLogger(__name__)
T = TypeVar("T")

TABLE = "cnn_search_journal"
SNAPSHOT_TABLE = "cnn_search_journal_snapshot"
SCHEMA_LOCK = 0x636E6E6A  # pg_advisory_lock key ("cnnj") held while the create step makes the table

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigint PRIMARY KEY,
    batch uuid NOT NULL,
    log text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {TABLE}_batch ON {TABLE} (batch);
CREATE TABLE IF NOT EXISTS {SNAPSHOT_TABLE} (
    id smallint PRIMARY KEY CHECK (id = 1),
    log_number bigint NOT NULL,
    format text NOT NULL,
    sha256 bytea NOT NULL,
    snapshot bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
"""

# The queries below (`# nosec B608`, bandit's SQL-injection check) are formatted with this module's
# constant table names only; every value is a bound parameter.
# The lock is keyed on the table, so journals in different schemas (search_path) do not wait on
# each other. One round trip: in autocommit mode PostgreSQL runs a multi-statement query as one transaction,
# each statement with a fresh snapshot, so MAX(id) is read after the lock is held.
# The batch is looked for under the same lock, so the append is idempotent there: a session the client
# gave up on (a client-side disconnect) may still be waiting on the lock when the client, settling,
# appends the batch again on a new connection; whichever takes the lock second writes nothing.
_APPEND = f"""
SELECT pg_advisory_xact_lock('{TABLE}'::regclass::oid::bigint);
INSERT INTO {TABLE} (id, batch, log)
SELECT next.base + u.ord - 1, %(batch)s, u.log
FROM (SELECT COALESCE(MAX(id), -1) + 1 AS base FROM {TABLE}) AS next,
     unnest(%(logs)s::text[]) WITH ORDINALITY AS u(log, ord)
WHERE NOT EXISTS (SELECT 1 FROM {TABLE} WHERE batch = %(batch)s);
"""  # nosec B608
_READ = f"SELECT id, log FROM {TABLE} WHERE id >= %(n)s ORDER BY id"  # nosec B608
_BATCH_LANDED = f"SELECT count(*) FROM {TABLE} WHERE batch = %(batch)s"  # nosec B608

# Snapshots. A snapshot holds logs 0 .. log_number - 1 and nothing else: log_number is how far this
# process had read when Optuna pickled its state (it pickles right after reading, under its lock).
# One row, replaced in one statement: a concurrent writer waits for the row lock and the WHERE is
# then checked against what it wrote, so an older snapshot never replaces a newer one; one that
# claims logs the journal does not have (the table restored from an older backup) is always replaced.
_LOGS = f"(SELECT COALESCE(MAX(id), -1) + 1 FROM {TABLE})"  # nosec B608
_SNAPSHOT_STORED = f"SELECT log_number, {_LOGS} FROM {SNAPSHOT_TABLE} WHERE id = 1"  # nosec B608
_SNAPSHOT_LOAD = (f"SELECT log_number, {_LOGS}, format, sha256, snapshot "  # nosec B608
                  f"FROM {SNAPSHOT_TABLE} WHERE id = 1")
_SNAPSHOT_SAVE = f"""
INSERT INTO {SNAPSHOT_TABLE} AS s (id, log_number, format, sha256, snapshot)
VALUES (1, %(n)s, %(format)s, %(sha256)s, %(snapshot)s)
ON CONFLICT (id) DO UPDATE SET log_number = EXCLUDED.log_number, format = EXCLUDED.format,
    sha256 = EXCLUDED.sha256, snapshot = EXCLUDED.snapshot, written_at = now()
WHERE s.log_number < EXCLUDED.log_number OR s.log_number > {_LOGS}
"""  # nosec B608
# Optuna pickles its whole state every 100 trials; uploading it each time would write the study
# about (trials / 100) times over. A snapshot is written only when it holds this much more of the
# log than the stored one, so an open replays at most about this fraction of the log.
SNAPSHOT_MIN_GROWTH = 0.1


# A snapshot is a pickle, and unpickling runs whatever the pickle names: anyone who can write the
# snapshot row could run code in every process that opens the store. So a snapshot is unpickled
# first with only the classes Optuna's replayed state is made of (Optuna 5; the format check pins
# the version), and handed to Optuna only if that succeeds.
_SNAPSHOT_CLASSES = {
    "optuna.storages.journal._storage": {"JournalStorageReplayResult"},
    "optuna.study._frozen": {"FrozenStudy"},
    "optuna.study._study_direction": {"StudyDirection"},
    "optuna.trial._frozen": {"FrozenTrial"},
    "optuna.trial._state": {"TrialState"},
    "optuna.distributions": {"FloatDistribution", "IntDistribution", "CategoricalDistribution", "UniformDistribution",
                             "LogUniformDistribution", "DiscreteUniformDistribution", "IntUniformDistribution",
                             "IntLogUniformDistribution"},
    "datetime": {"datetime", "timezone", "timedelta"},
}


class _SnapshotUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name not in _SNAPSHOT_CLASSES.get(module, ()):
            raise pickle.UnpicklingError(f"a journal snapshot may not hold {module}.{name}")
        return super().find_class(module, name)


def snapshot_format() -> str:
    """What a snapshot was pickled by: one from another Optuna (or Python) is never unpickled."""
    return f"optuna {optuna.__version__}, python {sys.version_info.major}.{sys.version_info.minor}"


def _disconnect(exc: BaseException) -> bool:
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and bool(exc.connection_invalidated)


class PostgresJournalBackend(BaseJournalBackend, BaseJournalSnapshot):
    """A journal log in PostgreSQL; safe for many processes and for the threads of one process.
    snapshots=False: neither load nor save snapshots (every open replays the whole log)."""

    def __init__(self, url: str, *, create_schema: bool = False, connect_timeout: int = 10,
                 application_name: str = "cnn-search", label: str | None = None,
                 settle_deadline: float = 120.0, snapshots: bool = True,
                 snapshot_min_growth: float = SNAPSHOT_MIN_GROWTH) -> None:
        if snapshot_min_growth < 0:
            raise ValueError(f"snapshot_min_growth cannot be negative but got {snapshot_min_growth}")
        self._url = url
        self._settle_deadline = settle_deadline  # JOURNAL_SETTLE_DEADLINE
        self._snapshots, self._snapshot_min_growth = snapshots, snapshot_min_growth
        self._read_end = 0  # the log number after the last one read_logs returned
        self._engine = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": connect_timeout, "application_name": application_name, **PG_KEEPALIVES},
        )
        self._lock = threading.Lock()
        self._conn: sqlalchemy.Connection | None = None
        self._appended_unread = False
        if create_schema:
            self._call(self._create_schema, retry_stale=True)
        else:
            present = self._call(lambda c: sqlalchemy.inspect(c).has_table(TABLE), retry_stale=True)
            if not present:
                raise StorageUnavailableError(
                    f"{redact(label or url)} has no journal table {TABLE}; create the study first (`make study NAME=...` "
                    "or the create-study service): workers and dashboards never create tables"
                )

    # -- pickling (Optuna pickles storages for some integrations): reconnect on the other side
    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"])  # type: ignore[misc]

    @staticmethod
    def _create_schema(conn: sqlalchemy.Connection) -> None:
        # Two create steps at once would race on CREATE TABLE IF NOT EXISTS (a unique violation on
        # pg_type): a session-level lock makes the second wait for the first.
        conn.exec_driver_sql(f"SELECT pg_advisory_lock({SCHEMA_LOCK})")
        try:
            conn.exec_driver_sql(_SCHEMA)
        finally:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({SCHEMA_LOCK})")

    def _connection(self) -> sqlalchemy.Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._engine.connect()
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # it is already broken
                self._conn.close()
            self._conn = None

    def _call(self, work: Callable[[sqlalchemy.Connection], T], *, retry_stale: bool) -> T:
        """Run work on this process's connection. A connection that a database restart broke is
        replaced, and work that is safe to repeat is tried once more on the fresh one at once;
        otherwise the error goes to the caller (the worker backs off and retries)."""
        with self._lock:
            reused = self._conn is not None
            try:
                return work(self._connection())
            except sqlalchemy.exc.DBAPIError as exc:
                self._drop_connection()
                if not (retry_stale and reused and _disconnect(exc)):
                    raise
            return work(self._connection())

    def _settle(self, work: Callable[[], T], first_error: BaseException) -> T:
        """Retry work through an outage, backing off, for at most the settle deadline; then raise
        first_error. Not the resilient store's retry: this one finishes an operation that may have
        been written (an append in flight, the read after it), which only the backend can tell."""
        deadline, delay = time.monotonic() + self._settle_deadline, 0.5
        while True:
            try:
                return work()
            except sqlalchemy.exc.DBAPIError:
                if time.monotonic() > deadline:
                    raise first_error from None
                time.sleep(delay)
                delay = min(2 * delay, 5.0)

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        def read() -> list:
            return self._call(lambda c: c.exec_driver_sql(_READ, {"n": log_number_from}).all(), retry_stale=True)

        try:
            rows = read()
        except sqlalchemy.exc.DBAPIError as exc:
            if not self._appended_unread:
                raise
            # JournalStorage reads right after it appends. Were this read to fail, the caller would
            # see the operation fail and repeat it (a second trial for one ask): wait for the store.
            rows = self._settle(read, exc)
        self._appended_unread = False
        logs, expected = [], log_number_from
        for number, log in rows:
            if number != expected:  # cannot happen under the append lock; never replay past a gap
                logger.warning("journal log %d is missing (read %d next); reading up to it", expected, number)
                break
            logs.append(json.loads(log))
            expected += 1
        self._read_end = expected
        return logs

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        params = {"batch": str(uuid.uuid4()), "logs": [json.dumps(log) for log in logs]}

        def append() -> None:
            self._call(lambda c: c.exec_driver_sql(_APPEND, params), retry_stale=False)

        def settle() -> None:
            landed = self._call(lambda c: c.exec_driver_sql(_BATCH_LANDED, params).scalar_one(), retry_stale=True)
            if not landed:
                append()

        try:
            append()
        except sqlalchemy.exc.DBAPIError as exc:
            if not _disconnect(exc):
                raise  # refused before anything was sent (no connection): nothing was written
            # The connection broke with the append in flight: it may or may not have committed.
            # Find out by its batch id before writing it again.
            self._settle(settle, exc)
        self._appended_unread = True

    # -- snapshots: Optuna's BaseJournalSnapshot ------------------------------------------------
    def save_snapshot(self, snapshot: bytes) -> None:
        """Store Optuna's pickled state, which holds the logs up to the last read (JournalStorage
        pickles right after it reads, under its lock). Never raises: Optuna saves inside
        create_new_trial, after the trial was written, and a failure there would be retried as a
        second trial. A snapshot is optional; a failed save costs the next opens some replay."""
        n = self._read_end
        if not self._snapshots or n == 0:
            return
        if not _looks_pickled(snapshot):
            logger.warning("refusing to store a journal snapshot that is not a whole pickle (%d bytes)", len(snapshot))
            return
        params = {"n": n, "format": snapshot_format(), "sha256": hashlib.sha256(snapshot).digest(),
                  "snapshot": snapshot}
        try:
            self._call(lambda c: self._write_snapshot(c, params), retry_stale=True)
        except sqlalchemy.exc.DBAPIError as exc:
            self._snapshot_unavailable("write", exc, stop=isinstance(exc, sqlalchemy.exc.ProgrammingError))

    def _write_snapshot(self, conn: sqlalchemy.Connection, params: dict[str, Any]) -> None:
        stored = conn.exec_driver_sql(_SNAPSHOT_STORED).first()
        if stored is not None:
            stored_n, logs = stored
            grown = params["n"] > stored_n and params["n"] >= stored_n * (1 + self._snapshot_min_growth)
            if not grown and stored_n <= logs:
                return  # not enough newer than the stored one (or older): keep that one
        conn.exec_driver_sql(_SNAPSHOT_SAVE, params)
        logger.debug("journal snapshot of logs 0..%d written (%d bytes)", params["n"] - 1, len(params["snapshot"]))

    def load_snapshot(self) -> bytes | None:
        """The stored snapshot, or None (then Optuna replays the whole log) when there is none or
        it cannot be trusted: written by another Optuna or Python, corrupt, or claiming logs the
        journal does not have."""
        if not self._snapshots:
            return None
        try:
            row = self._call(lambda c: c.exec_driver_sql(_SNAPSHOT_LOAD).first(), retry_stale=True)
        except sqlalchemy.exc.ProgrammingError as exc:  # no snapshot table yet, or no right to read it
            self._snapshot_unavailable("read", exc, stop=True)
            return None
        return None if row is None else _trusted_snapshot(*row)

    def _snapshot_unavailable(self, what: str, exc: BaseException, *, stop: bool) -> None:
        if stop:
            self._snapshots = False
        logger.warning("cannot %s the journal snapshot (%s: %s)%s", what, type(exc).__name__,
                       str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200],
                       "; this process goes on without snapshots (re-run the create step to add the table, "
                       f"grant SELECT, INSERT, UPDATE on {SNAPSHOT_TABLE})" if stop else "")

    def close(self) -> None:
        with self._lock:
            self._drop_connection()
        self._engine.dispose()


def _looks_pickled(data: bytes) -> bool:
    """A whole pickle (protocol 2 or later): it opens with PROTO and ends with STOP."""
    return len(data) > 2 and data[0] == 0x80 and data[-1] == ord(".")


def _trusted_snapshot(log_number: int, logs: int, format_: str, sha256: bytes, snapshot: Any) -> bytes | None:
    data, problem = bytes(snapshot), None
    if format_ != snapshot_format():
        problem = f"it was written by {format_}, this is {snapshot_format()}"
    elif log_number > logs:
        problem = f"it claims {log_number} logs, the journal has {logs}"
    elif hashlib.sha256(data).digest() != bytes(sha256) or not _looks_pickled(data):
        problem = "it is corrupt (its checksum does not match, or it is not a whole pickle)"
    else:
        problem = _content_problem(data, log_number)
    if problem is None:
        return data
    logger.warning("not using the journal snapshot: %s; replaying the whole journal", problem)
    return None


def _content_problem(data: bytes, log_number: int) -> str | None:
    """Unpickle with Optuna's classes only, and check that it holds the logs its row claims."""
    try:
        held = getattr(_SnapshotUnpickler(io.BytesIO(data)).load(), "log_number_read", None)
    except Exception as exc:  # any error of a pickle that is not Optuna's state
        return f"it cannot be unpickled safely ({type(exc).__name__}: {exc})"
    return None if held == log_number else f"it holds {held} logs but claims {log_number}"


@contextlib.contextmanager
def journal_in_scratch_schema(url: str) -> Iterator[str]:
    """A journal store on the database of url (a postgresql+psycopg2:// URL) in a fresh schema of
    its own, dropped with everything in it afterwards: for benchmarks and tests."""
    schema = f"scratch_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(f"{JOURNAL_PG_PREFIX}{url}", schema)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
