"""Locks for one-time builds in the artifact directory that workers share (a feature-cache study's
base, its features): one process builds an entry, the others wait for it, then reuse it.

- The store is PostgreSQL (`journal+postgresql+psycopg2://…` or `postgresql+psycopg2://…`): a
  session-level advisory lock, `pg_advisory_lock(key)` with a 64-bit key derived from the entry's
  kind and key, on a connection of its own that the builder holds for the whole build. Workers on
  other machines wait on the same key in the same database. PostgreSQL ends the lock with the
  session: at once when the builder's process dies (its socket closes), within about a minute when
  its machine vanishes (TCP keepalives, set on both ends of that connection). No file lock is
  taken, so nothing depends on how the shared volume (NFS, a ReadWriteMany claim) implements
  `flock`.
- Any other store (the embedded journal file, SQLite, the gRPC proxy, which gives workers no
  database connection): `flock` on `<folder>.lock` beside the entry, as before.

Either way the builder writes under a temporary name and publishes with a rename, so a half-written
file of a killed builder is never taken for a finished one (search/trial/_features.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from storage._errors import StorageConfigError
from storage._urls import JOURNAL_PG_PREFIX, PG_KEEPALIVES, redact

logger = logging.getLogger(__name__)

LOCK_NAMESPACE = "cnn-search/build"  # hashed with kind and key: no clash with the journal's own lock keys
WAIT_SLICE_S = 1.0  # a waiter comes back to Python this often (signal handlers run), then waits again
MAX_RETRY_S = 30.0  # longest pause between attempts to reach a database that is restarting
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout ends a wait
# Client side: a waiter notices a vanished server. Server side (per-session settings): PostgreSQL
# notices a vanished builder machine after 30 + 3 x 10 s and ends its session, and so its lock.
_SESSION_SETUP = ("SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; "
                  "SET tcp_keepalives_count = 3; SET lock_timeout = '{slice_ms}ms'")


def advisory_key(kind: str, key: str) -> int:
    """The signed 64-bit advisory lock key of a cache entry: the same on every machine."""
    digest = hashlib.sha256(f"{LOCK_NAMESPACE}:{kind}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_database(store_url: str | None) -> str | None:
    """The SQLAlchemy URL of the PostgreSQL database behind a store URL (the `journal+` prefix
    stripped), or None when the store is not PostgreSQL and builds take file locks."""
    if not store_url:
        return None
    url = store_url[len(JOURNAL_PG_PREFIX):] if store_url.startswith(JOURNAL_PG_PREFIX) else store_url
    return url if urlsplit(url).scheme.startswith("postgresql") else None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive `flock` on path, held for the block (released if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def advisory_lock(database_url: str, kind: str, key: str, *, wait_slice_s: float = WAIT_SLICE_S) -> Iterator[None]:
    """A session-level PostgreSQL advisory lock on (kind, key), held for the block on a dedicated
    connection; closed (and so released) afterwards, or when this process dies."""
    import sqlalchemy

    from storage._rdb import APPLICATION_NAME

    try:
        engine = sqlalchemy.create_engine(
            database_url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": 10, "application_name": APPLICATION_NAME, **PG_KEEPALIVES})
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as exc:
        raise StorageConfigError(f"build lock: cannot use the store URL {redact(database_url)} ({exc})") from None
    lock = _AdvisoryLock(engine, advisory_key(kind, key), f"{kind}/{key}", wait_slice_s)
    try:
        conn = lock.acquire()
        try:
            yield
        finally:
            lock.release(conn)
    finally:
        engine.dispose()


@contextlib.contextmanager
def build_lock(store_url: str | None, kind: str, key: str, folder: Path) -> Iterator[None]:
    """Hold the lock that lets one process (of any machine) build the cache entry `folder`:
    an advisory lock when the store is PostgreSQL, else a file lock on `<folder>.lock`."""
    database = lock_database(store_url)
    if database is None:
        with file_lock(Path(f"{folder}.lock")):
            yield
        return
    with advisory_lock(database, kind, key):
        yield


class _AdvisoryLock:
    """Acquire and release one advisory lock on a connection of its own, waiting through outages."""

    def __init__(self, engine: Any, key: int, what: str, wait_slice_s: float) -> None:
        self.engine, self.key, self.what, self.wait_slice_s = engine, key, what, wait_slice_s

    def acquire(self) -> Any:
        import sqlalchemy

        delay = 1.0
        while True:
            try:
                return self._wait_on(self.engine.connect())
            except sqlalchemy.exc.OperationalError as exc:  # the database is restarting or unreachable
                cause = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
                logger.warning("build lock %s: %s (%s); trying again in %.0fs", self.what,
                               redact(str(self.engine.url)), redact(cause), delay)
                time.sleep(delay)
                delay = min(2 * delay, MAX_RETRY_S)

    def _wait_on(self, conn: Any) -> Any:
        """Wait in slices of lock_timeout, so signal handlers run between them; the connection on success."""
        import sqlalchemy

        started, waited = time.monotonic(), False
        try:
            conn.exec_driver_sql(_SESSION_SETUP.format(slice_ms=max(1, int(self.wait_slice_s * 1000))))
            while True:
                try:
                    conn.exec_driver_sql("SELECT pg_advisory_lock(%s)", (self.key,))
                    break
                except sqlalchemy.exc.OperationalError as exc:
                    if getattr(exc.orig, "pgcode", None) != LOCK_NOT_AVAILABLE:
                        raise
                    if not waited:
                        logger.info("waiting for the build lock on %s: another process, maybe on another machine, "
                                    "is building it", self.what)
                    waited = True
        except BaseException:
            conn.close()
            raise
        if waited:
            logger.info("got the build lock on %s after %.0fs", self.what, time.monotonic() - started)
        return conn

    def release(self, conn: Any) -> None:
        import sqlalchemy

        try:
            if not conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (self.key,)).scalar():
                raise RuntimeError("the session no longer held it")
        except (sqlalchemy.exc.DBAPIError, RuntimeError) as exc:
            logger.warning("build lock %s was lost during the build (%s): another process may have built the same "
                           "entry too; entries are published by an atomic rename, so at worst the work was done twice",
                           self.what, str(exc).splitlines()[0])
        finally:
            conn.close()
