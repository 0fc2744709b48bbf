"""One place resolves the store: STORAGE (a URL), else the embedded journal file."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import optuna

logger = logging.getLogger(__name__)
DEFAULT_JOURNAL = "studies.journal"
JOURNAL_PG_PREFIX = "journal+"  # journal+postgresql+psycopg2://...: Optuna's journal, its log in PostgreSQL
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


STUDY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def check_study_name(name: str) -> str:
    """Study names are also directory names (reports/<name>/): no '/', '..', spaces or capitals."""
    if not isinstance(name, str) or not STUDY_NAME_RE.match(name):
        shown = name if len(str(name)) <= 80 else f"{str(name)[:80]}... ({len(name)} characters)"
        raise ValueError(
            f"{shown!r} is not a valid study name; use 1-63 lowercase letters, digits, '_' or '-', "
            "starting with a letter or digit (no '/', '..' or spaces)"
        )
    return name


class StorageConfigError(ValueError):
    """The store URL is malformed or names something unsupported."""


def resolve_url(url: str | None = None) -> str:
    """The explicit URL, else $STORAGE, else the embedded journal file in the working directory.

    A URL with a user but no password takes it from the file named by STORAGE_PASSWORD_FILE
    (a compose secret), so no password sits in an environment variable, a command line or a log.
    """
    url = url or os.environ.get("STORAGE") or ""
    if not url:
        return f"journal:///{Path(DEFAULT_JOURNAL).resolve()}".replace("////", "///")
    secret = os.environ.get("STORAGE_PASSWORD_FILE")
    parts = urlsplit(url)
    if secret and parts.username and parts.password is None:
        try:
            password = Path(secret).read_text().strip()
        except OSError as exc:
            raise StorageConfigError(f"STORAGE_PASSWORD_FILE {secret}: cannot read it ({exc.strerror})") from None
        netloc = parts.netloc.replace(f"{parts.username}@", f"{parts.username}:{quote(password, safe='')}@", 1)
        url = parts._replace(netloc=netloc).geturl()
    return url


def redact(url: str) -> str:
    """The URL with its password replaced by ***, safe to print."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def journal_path(url: str) -> Path | None:
    if url.startswith("journal://"):
        return Path(url[len("journal://"):])
    if url.endswith((".journal", ".log")) and "://" not in url:
        return Path(url)
    return None


def with_search_path(url: str, schema: str) -> str:
    """url with PostgreSQL's search_path set to schema (libpq's `options`): a journal store there
    has a table, and a lock, of its own."""
    if not _SCHEMA_RE.match(schema):
        raise StorageConfigError(f"{schema!r} is not a schema name this service uses: lowercase letters, digits, '_'")
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return parts._replace(query=urlencode(query)).geturl()


def sqlalchemy_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc

    return (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError)


def open_storage(url: str | None = None, *, create_schema: bool = False) -> optuna.storages.BaseStorage:
    """Open the store named by url (see resolve_url)."""
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
        from storage._journal_pg import PostgresJournalBackend
        from storage._rdb import APPLICATION_NAME, unavailable

        try:
            backend = PostgresJournalBackend(url[len(JOURNAL_PG_PREFIX):], create_schema=create_schema,
                                             application_name=APPLICATION_NAME, label=url)
            return optuna.storages.journal.JournalStorage(backend)
        except sqlalchemy_errors() as exc:
            raise unavailable(url, exc) from None
    if scheme.startswith("postgresql") or scheme.startswith("sqlite") or scheme.startswith("mysql"):
        from storage._rdb import open_rdb

        return open_rdb(url, create_schema=create_schema)
    raise StorageConfigError(
        f"unsupported store URL {redact(url)!r}; use journal+postgresql+psycopg2://user:password@host:5432/db "
        "(the service's store), postgresql+psycopg2://... (Optuna's RDB tables), journal:///path/to/file.journal, or leave STORAGE empty for the embedded store"
    )


def close_storage(storage: optuna.storages.BaseStorage) -> None:
    """Give back a store's database connections (tests and benches open many stores)."""
    backend = getattr(storage, "_backend", None)
    if hasattr(backend, "close"):
        backend.close()
    elif hasattr(storage, "engine"):
        storage.engine.dispose()


def describe(url: str | None = None) -> str:
    url = resolve_url(url)
    path = journal_path(url)
    return f"embedded journal store {path}" if path else f"store {redact(url)}"
