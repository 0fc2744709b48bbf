"""Optuna's JournalStorage with its log in a PostgreSQL table (SQLAlchemy + psycopg2).

Why: Optuna's RDBStorage costs 35 SQL statements and 7 commits for one ask + suggest + tell, and 8
such clients on 2 cores missed the latency goals by 2x (BENCHMARKS.md). A journal store keeps the
study in memory in every process and talks to the database only to append an operation and read
the operations other processes appended: two round trips per operation, one statement each.

Optuna ships the journal (optuna.storages.JournalStorage) and its backend interface
(BaseJournalBackend: read_logs / append_logs, with log numbers 0, 1, 2, ... without gaps); it ships
file and Redis backends, not a SQL one. This is that backend:

- one table holds the log of every study, `id` the log number, each log the JSON text Optuna's file
  journal writes (json.dumps: NaN and Infinity kept); every process replays the whole table when it
  opens the store, so keep unrelated work in another schema (`?options=-csearch_path%3Dname` in the
  URL), which has its own table and its own lock;
- an append takes a transaction-scoped advisory lock, numbers its logs from MAX(id) + 1 and
  commits, all in one round trip; the lock serialises appends, so a log is visible only after every
  log numbered before it (a reader that sees id N also sees ids below N) and numbers have no gaps;
- a reader returns only a gap-free run from the number asked for, as a second guard;
- every append carries a batch id: when the connection breaks while the append is in flight, the
  backend reconnects and looks for that batch before writing it again, so a database restart never
  duplicates an operation (a duplicated "create trial" would be a phantom trial); likewise the read
  that follows an append waits through an outage (JOURNAL_SETTLE_DEADLINE, 120 s) rather than fail
  an operation that was written, which its caller would then repeat;
- a broken connection is replaced on the next call: no pre-ping round trip on every call.

The schema (one table and its index) is created only by the create step (`make study`, the create-study
service); workers fail closed on a database without it, as they do for the RDB layout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import sqlalchemy
from optuna.storages.journal import BaseJournalBackend

from storage._rdb import StorageUnavailableError
from storage._urls import redact

logger = logging.getLogger(__name__)
T = TypeVar("T")

TABLE = "cnn_search_journal"
SCHEMA_LOCK = 0x636E6E6A  # pg_advisory_lock key ("cnnj") held while the create step makes the table
# How long an append whose commit was cut off keeps trying to learn whether it landed, and the read
# that follows an append keeps trying to read it back.
SETTLE_DEADLINE = float(os.environ.get("JOURNAL_SETTLE_DEADLINE", "120"))

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigint PRIMARY KEY,
    batch uuid NOT NULL,
    log text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {TABLE}_batch ON {TABLE} (batch);
"""

# The lock is keyed on the table, so journals in different schemas (search_path) do not wait on
# each other. One round trip: in autocommit mode PostgreSQL runs a multi-statement query as one transaction,
# each statement with a fresh snapshot, so MAX(id) is read after the lock is held.
_APPEND = f"""
SELECT pg_advisory_xact_lock('{TABLE}'::regclass::oid::bigint);
INSERT INTO {TABLE} (id, batch, log)
SELECT next.base + u.ord - 1, %(batch)s, u.log
FROM (SELECT COALESCE(MAX(id), -1) + 1 AS base FROM {TABLE}) AS next,
     unnest(%(logs)s::text[]) WITH ORDINALITY AS u(log, ord);
"""
_READ = f"SELECT id, log FROM {TABLE} WHERE id >= %(n)s ORDER BY id"
_BATCH_LANDED = f"SELECT count(*) FROM {TABLE} WHERE batch = %(batch)s"


def _disconnect(exc: BaseException) -> bool:
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and bool(exc.connection_invalidated)


class PostgresJournalBackend(BaseJournalBackend):
    """A journal log in PostgreSQL; safe for many processes and for the threads of one process."""

    def __init__(self, url: str, *, create_schema: bool = False, connect_timeout: int = 10,
                 application_name: str = "cnn-search", label: str | None = None) -> None:
        self._url = url
        self._engine = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": connect_timeout, "application_name": application_name},
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
            try:
                self._conn.close()
            except Exception:  # it is already broken
                pass
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

    def _patiently(self, work: Callable[[], T], first_error: BaseException) -> T:
        """Retry work through an outage, backing off, for at most SETTLE_DEADLINE; then raise
        first_error."""
        deadline, delay = time.monotonic() + SETTLE_DEADLINE, 0.5
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
            rows = self._patiently(read, exc)
        self._appended_unread = False
        logs, expected = [], log_number_from
        for number, log in rows:
            if number != expected:  # cannot happen under the append lock; never replay past a gap
                logger.warning("journal log %d is missing (read %d next); reading up to it", expected, number)
                break
            logs.append(json.loads(log))
            expected += 1
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
            self._patiently(settle, exc)
        self._appended_unread = True

    def close(self) -> None:
        with self._lock:
            self._drop_connection()
        self._engine.dispose()


@contextlib.contextmanager
def journal_in_scratch_schema(url: str) -> Iterator[str]:
    """A journal store on the database of url (a postgresql+psycopg2:// URL) in a fresh schema of
    its own, dropped with everything in it afterwards: for benchmarks and tests."""
    from storage._urls import JOURNAL_PG_PREFIX, with_search_path

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
