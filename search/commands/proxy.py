"""`python -m search proxy`: Optuna's gRPC storage proxy in front of the RDB store named by --storage or STORAGE."""

from __future__ import annotations

import argparse
import logging

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


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not (args.storage or settings.storage):
        raise StorageConfigError("no store: pass --storage or set STORAGE to the RDB store, "
                                 "postgresql+psycopg2://user@host:5432/db")
    url = grpc_proxy.check_rdb_url(settings.store_url(args.storage))
    storage = grpc_proxy.open_backend(url, threads=args.threads)
    logger.info("serving %s", redact(url))
    grpc_proxy.serve(storage, host=args.host, port=args.port, threads=args.threads)
    return 0
