"""TLS to PostgreSQL with `sslmode=verify-full` (issue: faults a real store brings, part 5): a server
of the test's own whose certificate a self-signed CA signed for `localhost` only.

`sslmode=require` encrypts but trusts any certificate, so whoever answers on the database's address
(a spoofed DNS name, a rogue pod) gets the password; verify-full checks the CA and the host name.
Every connection the service opens (the journal store, the RDB store, the build locks) takes the
mode from the store URL."""

from __future__ import annotations

import subprocess

import optuna
import pytest
import sqlalchemy
from helpers.pg_server import PostgresServer
from helpers.processes import REPO, tls_secrets

from storage import StorageUnavailableError, close_storage, open_storage
from storage._locks import build_lock


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory):
    """A server with TLS (a certificate for localhost, signed by its own CA); its CA file."""
    secrets = tls_secrets(tmp_path_factory.mktemp("pg-ca"), "localhost")
    with PostgresServer(ssl=(secrets / "tls.crt", secrets / "tls.key")) as pg:
        yield pg, secrets / "ca.crt"


def _ssl_in_use(url: str) -> bool:
    engine = sqlalchemy.create_engine(url.removeprefix("journal+"))
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text("select ssl from pg_stat_ssl where pid = pg_backend_pid()")).scalar()
    finally:
        engine.dispose()


@pytest.mark.parametrize("scheme", ["journal+postgresql+psycopg2", "postgresql+psycopg2"])
def test_verify_full_with_the_ca_runs_a_study_over_tls(tls_pg, scheme, tmp_path):
    pg, ca = tls_pg
    url = pg.url(scheme, host="localhost", sslmode="verify-full", sslrootcert=str(ca))
    store = open_storage(url, create_schema=True)
    try:
        study = optuna.create_study(study_name=f"tls-{scheme[:7]}", storage=store, load_if_exists=True)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(study.trials) >= 2
    finally:
        close_storage(store)
    assert _ssl_in_use(url)
    with build_lock(url, "tls", "probe", tmp_path / "entry"):  # the advisory-lock connection, same mode
        pass


def test_verify_full_refuses_a_certificate_for_another_host_or_from_another_ca(tls_pg, tmp_path):
    pg, ca = tls_pg
    # 127.0.0.1 is not the name the certificate was made for: verify-ca passes, verify-full does not.
    assert _ssl_in_use(pg.url(host="127.0.0.1", sslmode="verify-ca", sslrootcert=str(ca)))
    with pytest.raises(StorageUnavailableError, match="(?i)does not match host name.*127.0.0.1|127.0.0.1.*does not match"):
        open_storage(pg.url("journal+postgresql+psycopg2", host="127.0.0.1", sslmode="verify-full",
                            sslrootcert=str(ca)), create_schema=True)
    other = tls_secrets(tmp_path / "other", "localhost")  # a CA that did not sign the server's certificate
    with pytest.raises(StorageUnavailableError, match="certificate verify failed"):
        open_storage(pg.url("journal+postgresql+psycopg2", host="localhost", sslmode="verify-full",
                            sslrootcert=str(other / "ca.crt")), create_schema=True)
    # What verify-full protects against: sslmode=require connects to whatever answers.
    assert _ssl_in_use(pg.url(host="127.0.0.1", sslmode="require"))


def test_a_process_that_loaded_tensorflow_still_connects_over_tls(tls_pg):
    """psycopg2's SSL library loaded after TensorFlow's crashed the process (SIGSEGV) at its first TLS
    connection: a worker (Keras loaded) reconnecting after a restart, a build lock. The storage
    package loads psycopg2 first; a process that loaded TensorFlow before it is warned."""
    import sys

    pg, ca = tls_pg
    url = pg.url("journal+postgresql+psycopg2", host="localhost", sslmode="verify-full", sslrootcert=str(ca))
    code = ("import search, keras\nfrom storage import close_storage, open_storage\n"
            f"close_storage(open_storage({url!r}, create_schema=True))\nprint('connected')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0 and "connected" in done.stdout, (done.returncode, done.stderr[-2000:])
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", "import keras\nimport storage"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode != 0 and "import search (or psycopg2) before keras" in done.stderr
