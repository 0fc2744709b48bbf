"""Stores (embedded journal file or PostgreSQL) and the artifact directory shared by workers."""

from storage._artifacts import artifact_root, artifact_store, cache_path, upload
from storage._rdb import StorageUnavailableError
from storage._urls import (
    JOURNAL_PG_PREFIX,
    StorageConfigError,
    check_study_name,
    close_storage,
    describe,
    journal_path,
    open_storage,
    redact,
    resolve_url,
    with_search_path,
)

__all__ = [
    "JOURNAL_PG_PREFIX",
    "StorageConfigError",
    "StorageUnavailableError",
    "artifact_root",
    "artifact_store",
    "cache_path",
    "check_study_name",
    "close_storage",
    "describe",
    "journal_path",
    "open_storage",
    "redact",
    "resolve_url",
    "upload",
    "with_search_path",
]
