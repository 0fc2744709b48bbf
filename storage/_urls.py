"""Store URLs: resolving STORAGE (else the embedded journal file), redacting, journal paths, schemas.

Opening a store from a URL is storage._open's; this module imports only storage._errors."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from storage._errors import StorageConfigError, StorageUnavailableError

logger = logging.getLogger(__name__)
DEFAULT_JOURNAL = "studies.journal"
# libpq's client side on every store connection: a database node lost without a RST (a failover, a
# dropped route) is noticed after about 30 + 3 x 10 s idle, or 60 s of unacknowledged writes
# (tcp_user_timeout), instead of the kernel's 15 minutes to 2 hours that froze a worker and its threads.
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
                 "tcp_user_timeout": 60_000}
JOURNAL_PG_PREFIX = "journal+"  # journal+postgresql+psycopg2://...: Optuna's journal, its log in PostgreSQL
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


STUDY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def is_loopback(host: str) -> bool:
    """Whether a listener on host is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_study_name(name: str) -> str:
    """Study names are also directory names (reports/<name>/): no '/', '..', spaces or capitals."""
    if not isinstance(name, str) or not STUDY_NAME_RE.match(name):
        shown = name if len(str(name)) <= 80 else f"{str(name)[:80]}... ({len(name)} characters)"
        raise ValueError(
            f"{shown!r} is not a valid study name; use 1-63 lowercase letters, digits, '_' or '-', "
            "starting with a letter or digit (no '/', '..' or spaces)"
        )
    return name


def resolve_url(url: str | None = None, *, password_file: str | os.PathLike | None = None,
                user: str | None = None) -> str:
    """The URL, else the embedded journal file in the working directory.

    A URL with a user but no password takes it from `password_file` (STORAGE_PASSWORD_FILE, a
    compose or Kubernetes secret), so no password sits in an environment variable, a command line
    or a log. `user` (STORAGE_USER) replaces a PostgreSQL URL's user, so one STORAGE serves the
    create step (the owner) and the workers and the dashboard (their own roles, their own secrets).
    """
    if not url:
        return f"journal:///{Path(DEFAULT_JOURNAL).resolve()}".replace("////", "///")
    secret = password_file
    parts = urlsplit(url)
    if user and "postgresql" in parts.scheme:  # with or without a user in STORAGE
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{quote(user, safe='')}@{host}")  # the owner's password, if any, goes too
        url = parts.geturl()
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


def unavailable(url: str, exc: BaseException) -> StorageUnavailableError:
    """The error for a store that cannot be opened: the URL and the first line of the cause, both
    without the password."""
    detail = redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
    return StorageUnavailableError(f"cannot open {redact(url)}: {type(exc).__name__}: {detail}")


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
