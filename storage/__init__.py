"""Stores (embedded journal file or PostgreSQL) and the artifact directory shared by workers."""

import sys
import warnings

# psycopg2 before TensorFlow: both bring an SSL library, and psycopg2's, loaded after TensorFlow's,
# crashes the process (SIGSEGV) at its first TLS connection (sslmode=require, verify-full; measured
# with tensorflow-cpu 2.21 and psycopg2-binary 2.9). Every entry point of the service imports storage
# before anything loads TensorFlow; a notebook that imported keras first is warned.
if "tensorflow" in sys.modules and "psycopg2" not in sys.modules:
    warnings.warn("TensorFlow was imported before psycopg2: a TLS connection to PostgreSQL (sslmode=require or "
                  "verify-full) would crash this process; import search (or psycopg2) before keras or tensorflow",
                  RuntimeWarning, stacklevel=2)
try:
    import psycopg2  # noqa: F401
except ImportError:  # a client of the embedded store or the storage proxy only
    pass

from storage._artifacts import Artifacts, artifact_root, artifact_store, cache_path, upload
from storage._errors import StorageConfigError, StorageUnavailableError
from storage._locks import advisory_key, advisory_lock, build_lock, file_lock, lock_database
from storage._objects import ObjectStore
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
    "Artifacts",
    "ObjectStore",
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
