"""Stores (embedded journal file or PostgreSQL) and the artifact directory shared by workers."""

from storage._artifacts import artifact_root, artifact_store, cache_path, upload
from storage._errors import StorageConfigError, StorageUnavailableError
from storage._locks import advisory_key, advisory_lock, build_lock, file_lock, lock_database
from storage._open import close_storage, describe, open_storage
from storage._roles import READER, WRITER, StoreRole, check_roles, ensure_roles
from storage._urls import (
    JOURNAL_PG_PREFIX,
    check_study_name,
    is_loopback,
    journal_path,
    redact,
    resolve_url,
    with_search_path,
)

__all__ = [
    "READER",
    "WRITER",
    "StoreRole",
    "check_roles",
    "ensure_roles",
    "JOURNAL_PG_PREFIX",
    "StorageConfigError",
    "StorageUnavailableError",
    "advisory_key",
    "advisory_lock",
    "artifact_root",
    "artifact_store",
    "build_lock",
    "cache_path",
    "check_study_name",
    "close_storage",
    "describe",
    "file_lock",
    "is_loopback",
    "journal_path",
    "lock_database",
    "open_storage",
    "redact",
    "resolve_url",
    "upload",
    "with_search_path",
]
