"""PostgreSQL (or SQLite) through SQLAlchemy: connections that survive a server restart."""

from __future__ import annotations

import optuna

from storage._errors import StorageConfigError, StorageUnavailableError
from storage._urls import PG_KEEPALIVES, redact, unavailable

# The connection budget: a worker's three threads (trials, heartbeat, reaper) share one pool of
# POOL_SIZE + MAX_OVERFLOW connections, so N workers hold at most 2N (README, "Reliability").
POOL_SIZE = 1
MAX_OVERFLOW = 1
APPLICATION_NAME = "cnn-search"  # how the service's sessions show in pg_stat_activity


def open_rdb(url: str, *, create_schema: bool = False) -> optuna.storages.RDBStorage:
    engine_kwargs: dict = {}
    if url.startswith("postgresql"):
        engine_kwargs = {
            "pool_pre_ping": True,  # a connection killed by a restart is replaced, not used
            "pool_recycle": 300,
            "pool_size": POOL_SIZE,
            "max_overflow": MAX_OVERFLOW,
            "connect_args": {"connect_timeout": 10, "application_name": APPLICATION_NAME, **PG_KEEPALIVES},
        }
    if not create_schema:
        _require_schema(url, engine_kwargs.get("connect_args", {}))
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=not create_schema)
    except Exception as exc:
        raise unavailable(url, exc) from None
    if create_schema:
        _add_one_retry_index(storage)
    return storage


# One retry per failed trial (attrs.RETRY_OF_TRIAL): a partial unique index on Optuna's table of trial
# system attributes. Optuna writes a trial and its attributes in one transaction, so a second retry
# of the same trial is refused whole (IntegrityError), never half-written. Indexes are not part of
# Optuna's schema version; `optuna storage upgrade` leaves this one alone (it recreates no table on
# PostgreSQL), and the create step makes it again if it is ever gone.
def _add_one_retry_index(storage: optuna.storages.RDBStorage) -> None:
    import sqlalchemy

    from storage.attrs import ONE_RETRY_INDEX, RETRY_OF_TRIAL  # constants of ours: no quote in them to escape

    try:
        with storage.engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"CREATE UNIQUE INDEX IF NOT EXISTS {ONE_RETRY_INDEX} ON "
                                         f"trial_system_attributes (value_json) WHERE key = '{RETRY_OF_TRIAL}'"))  # nosec B608
    except sqlalchemy.exc.ProgrammingError as exc:  # e.g. "must be owner of table trial_system_attributes"
        raise StorageConfigError(
            f"the create step could not add the index {ONE_RETRY_INDEX} (one retry per failed trial) to "
            f"trial_system_attributes: {str(exc.orig).splitlines()[0]}; run it as the owner of Optuna's tables") from None


def _require_schema(url: str, connect_args: dict) -> None:
    """Fail closed, with a clear message, on a database without Optuna's tables."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            present = sqlalchemy.inspect(conn).has_table("version_info")
    except Exception as exc:
        raise unavailable(url, exc) from None
    finally:
        engine.dispose()
    if not present:
        raise StorageUnavailableError(
            f"{redact(url)} has no Optuna schema; create the study first (`make study NAME=...` or the "
            "create-study service): workers and dashboards never create tables"
        )
