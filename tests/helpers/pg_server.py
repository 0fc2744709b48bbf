"""A PostgreSQL server of a test's own, on 127.0.0.1 and a free port, from a fresh `initdb`: for what
the shared server on 5432 must not be changed for (TLS). Started and stopped by the test's fixture.

    with PostgresServer(ssl=(cert, key)) as pg:
        pg.url("journal+postgresql+psycopg2", sslmode="verify-full", sslrootcert=ca)

PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user (runuser), in a
folder of /tmp it can reach (pytest's are the root user's only); removed when the server stops.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlencode

from helpers.processes import free_port


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        raise AssertionError(f"{name} is needed to start a PostgreSQL server of the test's own: apt-get install "
                             "postgresql")
    return str(found)


class PostgresServer:
    def __init__(self, *, ssl: tuple[Path, Path] | None = None) -> None:
        self.ssl, self.port = ssl, free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="cnn-search-pg-"))
        self.data = self.folder / "data"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self.as_postgres, *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command[0]}: {done.stdout[-1500:]} {done.stderr[-1500:]}"

    def __enter__(self) -> PostgresServer:
        if self.as_postgres:
            shutil.chown(self.folder, "postgres")
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
        settings = [f"port = {self.port}", "listen_addresses = '127.0.0.1'",
                    f"unix_socket_directories = '{self.folder}'", "fsync = off"]
        if self.ssl is not None:
            cert, key = self.ssl
            for source, name in ((cert, "server.crt"), (key, "server.key")):
                target = self.data / name
                shutil.copy(source, target)
                target.chmod(0o600)
                if self.as_postgres:
                    shutil.chown(target, "postgres")
            settings += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n".join(settings) + "\n")
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", "start")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, scheme: str = "postgresql+psycopg2", host: str = "127.0.0.1", **query: str) -> str:
        tail = f"?{urlencode(query)}" if query else ""
        return f"{scheme}://postgres@{host}:{self.port}/postgres{tail}"
