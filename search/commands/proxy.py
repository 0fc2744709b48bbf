"""`python -m search proxy`: Optuna's gRPC storage proxy in front of the RDB store named by --storage or STORAGE."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from search.settings import Settings
from storage import StorageConfigError, redact
from storage import proxy as grpc_proxy

HELP = "Optuna's gRPC storage proxy in front of the RDB store (STORAGE)"
logger = logging.getLogger("search")


def add_parser(sub: argparse._SubParsersAction, settings: Settings) -> None:
    p = sub.add_parser("proxy", help=HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=13000)
    p.add_argument("--storage", default=None, help="the RDB store URL (default: $STORAGE)")
    p.add_argument("--threads", type=int, default=10, help="server threads, and database connections")
    p.add_argument("--tls-cert", type=Path, default=None, help="the proxy's certificate (PEM; make proxy-secrets)")
    p.add_argument("--tls-key", type=Path, default=None, help="its private key (PEM)")
    p.add_argument("--token-file", type=Path, default=None,
                   help="a file holding the token every client must send (required off loopback, with TLS)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not (args.storage or settings.storage):
        raise StorageConfigError("no store: pass --storage or set STORAGE to the RDB store, "
                                 "postgresql+psycopg2://user@host:5432/db")
    security = grpc_proxy.ServerSecurity(tls_cert=args.tls_cert, tls_key=args.tls_key, token_file=args.token_file)
    security.check(args.host)  # before the store is opened: a bad flag costs nothing
    url = grpc_proxy.check_rdb_url(settings.store_url(args.storage))
    storage = grpc_proxy.open_backend(url, threads=args.threads)
    logger.info("serving %s", redact(url))
    grpc_proxy.serve(storage, host=args.host, port=args.port, threads=args.threads, security=security)
    return 0
