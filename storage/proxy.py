"""Optuna's gRPC storage proxy in front of the RDB store.

    python -m search proxy --host 0.0.0.0 --port 13000 --tls-cert F --tls-key F --token-file F \
        [--storage postgresql+psycopg2://user@host/db]

For more workers than the database should hold connections for: the proxy holds one pool of
`--threads` connections and the workers (STORAGE=grpcs://host:13000?ca_file=...&token_file=...) hold
none; off loopback it serves only with TLS and a token (storage._grpc). It serves Optuna's
RDB layout only (Optuna's proxy cannot front a JournalStorage, optuna/optuna#6084). It never
creates tables: the study must have been created first, directly on the database (`python -m
search create NAME`, the create-study Job), as for workers.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import optuna

from storage._errors import StorageConfigError
from storage._grpc import ServerSecurity, make_server
from storage._urls import JOURNAL_PG_PREFIX, PG_KEEPALIVES, journal_path, redact, unavailable

logger = logging.getLogger("storage.proxy")
APPLICATION_NAME = "cnn-search-proxy"  # how the proxy's sessions show in pg_stat_activity
RDB_SCHEMES = ("postgresql", "mysql", "sqlite")


def check_rdb_url(url: str) -> str:
    """url if it names Optuna's RDB layout; a StorageConfigError that says what to use otherwise."""
    scheme = urlsplit(url).scheme
    if url.startswith(JOURNAL_PG_PREFIX) or journal_path(url) is not None:
        raise StorageConfigError(
            f"the storage proxy fronts Optuna's RDB tables, not a journal store ({redact(url)}): Optuna's gRPC "
            "proxy cannot serve a JournalStorage (optuna/optuna#6084). Point STORAGE or --storage at the RDB "
            "layout, postgresql+psycopg2://user@host:5432/db, and create the study there")
    if not scheme.startswith(RDB_SCHEMES):
        raise StorageConfigError(f"unsupported store URL {redact(url)!r} for the storage proxy; use "
                                 "postgresql+psycopg2://user@host:5432/db (Optuna's RDB tables)")
    return url


def open_backend(url: str, *, threads: int) -> optuna.storages.BaseStorage:
    """The RDB store with a pool as large as the server's thread pool, cached as Optuna's
    get_storage does (its proxy docs warn that a bare RDBStorage is slow behind it)."""
    from storage._rdb import _require_schema

    engine_kwargs: dict = {}
    if url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 300, "pool_size": threads, "max_overflow": 0,
                         "connect_args": {"connect_timeout": 10, "application_name": APPLICATION_NAME,
                                          **PG_KEEPALIVES}}
    _require_schema(url, engine_kwargs.get("connect_args", {}))
    try:
        rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=True)
    except Exception as exc:
        raise unavailable(url, exc) from None
    return optuna.storages.get_storage(rdb)


def serve(storage: optuna.storages.BaseStorage, *, host: str, port: int, threads: int,
          security: ServerSecurity = ServerSecurity()) -> None:
    """Serve until the process is stopped (SIGTERM ends it; workers' calls in flight then fail).
    Off loopback only with TLS and a token (storage._grpc.ServerSecurity)."""
    server = make_server(storage, host=host, port=port, threads=threads, security=security)
    server.start()
    logger.info("storage proxy on %s:%d, %d threads, %s, %s", host, port, threads,
                "TLS" if security.tls_cert else "plaintext (loopback)",
                "token required" if security.token_file else "no token")
    server.wait_for_termination()
