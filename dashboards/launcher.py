"""python -m dashboards.launcher: optuna-dashboard on the store the workers use.

Binds 127.0.0.1 by default, attaches the artifact directory (final models, evaluation
records), and never creates or migrates the schema: an RDB store is opened with table
creation skipped.
"""

from __future__ import annotations

import argparse
import logging
import sys

from search.settings import Settings
from storage import artifact_store, describe, open_storage

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.launcher")
    parser.add_argument("--storage", default=None, help="store URL (default: $STORAGE, else the embedded journal)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--artifacts", default=None, help="artifact directory (default: $ARTIFACTS_DIR or ./artifacts)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from optuna_dashboard import run_server

    settings = Settings.from_env()
    url = settings.store_url(args.storage)
    storage = open_storage(url, create_schema=False)
    print(f"optuna-dashboard for {describe(url)} at http://{args.host}:{args.port}/", flush=True)
    run_server(storage, host=args.host, port=args.port,
               artifact_store=artifact_store(args.artifacts or settings.artifacts_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
