"""A real `mlflow server` on 127.0.0.1 for the tests: a SQLite backend store and a local artifact
root in a temporary folder, started by the test and stopped by it."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from helpers.processes import free_port, stop, wait_for_server


@contextlib.contextmanager
def mlflow_server(folder: Path, timeout: float = 90) -> Iterator[str]:
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    assert exe, "mlflow is a dev dependency (pyproject.toml): make venv installs it"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([exe, "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for_server(proc, f"{uri}/health", folder / "server.log", "mlflow server", timeout)
        yield uri
    finally:
        stop(proc)
        log.close()
