"""The client side of Optuna's gRPC storage proxy: STORAGE=grpc://host:port.

Workers behind the proxy hold no database connection: each one keeps a gRPC channel to
`python -m search proxy`, which holds one pool for all of them (README, "Many GPU machines").
"""

from __future__ import annotations

import warnings
from urllib.parse import urlsplit

import optuna

from storage._errors import StorageConfigError, StorageUnavailableError

GRPC_SCHEME = "grpc"
DEFAULT_PORT = 13000
CONNECT_TIMEOUT_S = 15.0  # Reliability row 11: a bad store URL is a clear error within 15 s


def parse_grpc_url(url: str) -> tuple[str, int]:
    """(host, port) of grpc://host[:port]; the port defaults to the proxy's 13000."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme != GRPC_SCHEME or not parts.hostname or parts.username or parts.path not in ("", "/")
            or parts.query or port == -1):
        raise StorageConfigError(f"{url!r} is not a storage proxy URL; use grpc://host:port, "
                                 f"e.g. grpc://storage-proxy:{DEFAULT_PORT}")
    return parts.hostname, port or DEFAULT_PORT


def open_grpc(url: str, *, timeout: float = CONNECT_TIMEOUT_S) -> optuna.storages.GrpcStorageProxy:
    """A client of the proxy at url, once the proxy answers (at most `timeout` seconds)."""
    host, port = parse_grpc_url(url)
    with warnings.catch_warnings():  # experimental in Optuna; we pin optuna==5.0.*
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        proxy = optuna.storages.GrpcStorageProxy(host=host, port=port)
    try:
        proxy.wait_server_ready(timeout=timeout)
    except ConnectionError:
        proxy.close()
        raise StorageUnavailableError(
            f"no storage proxy answered at grpc://{host}:{port} within {timeout:.0f} s; start it with "
            "`python -m search proxy --storage postgresql+psycopg2://...` (Kubernetes: the storage-proxy "
            "Deployment of deploy/kubernetes/overlays/proxy)"
        ) from None
    return proxy
