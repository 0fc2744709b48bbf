"""HTTP Basic authentication in front of optuna-dashboard (which has none, and can delete studies and
tell trials): every request but `/healthz` must carry a user and password from DASHBOARD_AUTH_FILE,
else 401 with a `WWW-Authenticate` challenge, so a browser asks for them.

Ours, as WSGI middleware around `optuna_dashboard.wsgi()` (about 50 lines), rather than an
authenticating proxy container (oauth2-proxy, nginx): one process, one port, no second image to pin
and patch, and the same check on every deployment (README, "What we use from the libraries").
Use it behind TLS (a Kubernetes port-forward, or an ingress that terminates TLS): Basic auth sends the
password with every request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
REALM = "cnn-search dashboard"
HEALTH_PATH = "/healthz"  # the readiness probe's: answers "ok", reads nothing from the store

WSGIApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]


class AuthFileError(ValueError):
    """The users file is missing, empty or malformed; the message names the fix."""


def read_users(path: Path) -> dict[str, str]:
    """user -> password from `user:password` lines (blank lines and # comments skipped)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise AuthFileError(f"DASHBOARD_AUTH_FILE {path}: cannot read it ({exc.strerror}); write user:password "
                            "lines, e.g. printf 'admin:%s\\n' \"$(openssl rand -hex 16)\" > FILE") from None
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise AuthFileError(f"DASHBOARD_AUTH_FILE {path}, line {number}: expected user:password")
        users[user] = password
    if not users:
        raise AuthFileError(f"DASHBOARD_AUTH_FILE {path} names no user; write user:password lines")
    return users


class BasicAuth:
    """WSGI middleware: the wrapped app sees only requests with a known user and its password
    (with `users` None, every request: the local dashboard on 127.0.0.1); `/healthz` either way."""

    def __init__(self, app: WSGIApp, users: dict[str, str] | None) -> None:
        self.app = app
        self.users = None if users is None else {user.encode(): password.encode() for user, password in users.items()}

    def allowed(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        known = user in self.users
        # Fixed-length digests compared on every request, known user or not, so timing tells neither
        # the user names nor the length of a password.
        expected = hashlib.sha256(self.users.get(user, b"\0unknown user")).digest()
        return hmac.compare_digest(hashlib.sha256(password).digest(), expected) and known and bool(sep)

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == HEALTH_PATH:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if self.users is None or self.allowed(environ.get("HTTP_AUTHORIZATION", "")):
            return self.app(environ, start_response)
        start_response("401 Unauthorized", [("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),
                                            ("Content-Type", "text/plain")])
        return [b"401: log in with a user of DASHBOARD_AUTH_FILE\n"]
