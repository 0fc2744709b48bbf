"""Processes the tests start: the service's CLI, and free loopback ports for servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m search ARGS` with `env` on top of this process's environment; output captured."""
    return subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_server(proc: subprocess.Popen, url: str, log: Path, what: str, timeout: float) -> None:
    """Until `url` answers (any HTTP status), or fail with the end of the server's log when `proc`
    exits or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start: {log.read_text()[-3000:]}")
        time.sleep(0.3)


def tls_secrets(folder: Path, *hosts: str) -> Path:
    """What `make proxy-secrets` writes into folder (deploy/proxy-secrets.sh): a CA, a certificate it
    signed for `hosts` (default: the storage proxy's names, localhost, 127.0.0.1) and its key, a token."""
    done = subprocess.run(["sh", str(REPO / "deploy/proxy-secrets.sh"), str(folder), *hosts], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return folder
