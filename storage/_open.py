"""Opening and closing stores: a resolved URL -> an Optuna storage (embedded journal file,
PostgreSQL journal, or Optuna's RDB tables). Sits above the URL helpers and the backends."""

from __future__ import annotations

import weakref
from urllib.parse import urlsplit

import optuna

from storage._errors import StorageConfigError
from storage._urls import JOURNAL_PG_PREFIX, journal_path, redact, resolve_url, unavailable


def sqlalchemy_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc

    return (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError)


# The journal backends open_storage made, by storage: closing a store gives their connections back
# without reaching into Optuna's private attributes.
_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def open_storage(url: str | None = None, *, create_schema: bool = False,
                 settle_deadline: float = 120.0) -> optuna.storages.BaseStorage:
    """Open the store named by url (see resolve_url; None: the embedded journal file).
    settle_deadline: JOURNAL_SETTLE_DEADLINE of a PostgreSQL journal store."""
    url = resolve_url(url)
    path = journal_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(
            str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path))
        )
        return optuna.storages.journal.JournalStorage(backend)
    scheme = urlsplit(url).scheme
    if scheme.startswith(JOURNAL_PG_PREFIX + "postgresql"):
        from storage._journal_pg import PostgresJournalBackend  # loads SQLAlchemy: only for a database URL
        from storage._rdb import APPLICATION_NAME

        try:
            backend = PostgresJournalBackend(url[len(JOURNAL_PG_PREFIX):], create_schema=create_schema,
                                             application_name=APPLICATION_NAME, label=url,
                                             settle_deadline=settle_deadline)
            storage = optuna.storages.journal.JournalStorage(backend)
            _BACKENDS[storage] = backend
            return storage
        except sqlalchemy_errors() as exc:
            raise unavailable(url, exc) from None
    if scheme in ("grpc", "grpcs"):  # Optuna's gRPC storage proxy (python -m search proxy) holds the connections
        from storage._grpc import open_grpc

        return open_grpc(url)
    if scheme.startswith("postgresql") or scheme.startswith("sqlite") or scheme.startswith("mysql"):
        from storage._rdb import open_rdb

        return open_rdb(url, create_schema=create_schema)
    raise StorageConfigError(
        f"unsupported store URL {redact(url)!r}; use journal+postgresql+psycopg2://user:password@host:5432/db "
        "(the service's store), postgresql+psycopg2://... (Optuna's RDB tables), journal:///path/to/file.journal, grpcs://host:13000?ca_file=...&token_file=... (the storage proxy), or leave STORAGE empty for the embedded store"
    )


def close_storage(storage: optuna.storages.BaseStorage) -> None:
    """Give back a store's database connections (tests and benches open many stores)."""
    backend = _BACKENDS.pop(storage, None)
    if hasattr(backend, "close"):
        backend.close()
    elif hasattr(storage, "engine"):
        storage.engine.dispose()
    elif callable(getattr(storage, "close", None)):  # a gRPC storage proxy client: its channel
        storage.close()


def describe(url: str | None = None) -> str:
    url = resolve_url(url)
    path = journal_path(url)
    return f"embedded journal store {path}" if path else f"store {redact(url)}"
