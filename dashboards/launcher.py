"""python -m dashboards.launcher: optuna-dashboard on the store the workers use.

Binds 127.0.0.1 by default, attaches the artifact directory (final models, evaluation
records), and never creates or migrates the schema: an RDB store is opened with table
creation skipped. With DASHBOARD_AUTH_FILE it asks for a login (dashboards/auth.py); `/healthz`
answers without one, for probes.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dashboards.auth import AuthFileError, BasicAuth, read_users
from search.settings import Settings
from storage import describe, is_loopback, open_storage

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.launcher")
    parser.add_argument("--storage", default=None, help="store URL (default: $STORAGE, else the embedded journal)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--artifacts", default=None, help=(
        "artifact directory (default: $ARTIFACTS_DIR or ./artifacts; with $ARTIFACTS_URL, object storage)"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import bottle
    from optuna_dashboard import wsgi

    settings = Settings.from_env()
    try:
        users = None if settings.dashboard_auth_file is None else read_users(settings.dashboard_auth_file)
    except AuthFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if users is None and not is_loopback(args.host):
        logger.warning("the dashboard listens on %s without a login: anyone who reaches it can delete studies; "
                       "set DASHBOARD_AUTH_FILE (Kubernetes does) unless only trusted hosts reach it", args.host)
    url = settings.store_url(args.storage)
    storage = open_storage(url, create_schema=False)
    app = BasicAuth(wsgi(storage, artifact_store=settings.artifacts(args.artifacts).artifact_store()), users)
    print(f"optuna-dashboard for {describe(url)} at http://{args.host}:{args.port}/"
          f"{'' if users is None else f' (login: {len(users)} user(s) of DASHBOARD_AUTH_FILE)'}", flush=True)
    bottle.run(app, host=args.host, port=args.port, quiet=True)  # what optuna_dashboard.run_server runs
    return 0


if __name__ == "__main__":
    sys.exit(main())
