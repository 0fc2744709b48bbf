"""The storage proxy's security and connections (issue: faults a real cluster brings, parts 4 and 5):
TLS and a token, plaintext only on loopback, keepalive and deadlines through a half-open connection.

Optuna's own proxy accepts anyone who reaches its port, in plaintext, and its client waits forever on
a connection that went half-open; each test here fails on that."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import optuna
import pytest
from helpers.processes import free_port, tls_secrets
from helpers.relay import Relay

from search.study._store import resilient
from storage import StorageConfigError, StorageUnavailableError
from storage._grpc import GrpcTarget, ProxyClient, ServerSecurity, make_server, open_grpc, parse_grpc_url


@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> Path:
    return tls_secrets(tmp_path_factory.mktemp("proxy-secrets"))


@pytest.fixture
def tls_proxy(secrets):
    """A proxy with TLS and a token on 127.0.0.1, in front of an in-memory store; its port."""
    port = free_port()
    server = make_server(optuna.storages.InMemoryStorage(), host="127.0.0.1", port=port, threads=4,
                         security=ServerSecurity(secrets / "tls.crt", secrets / "tls.key", secrets / "token"))
    server.start()
    yield port
    server.stop(0).wait()


def _url(port: int, secrets: Path, **query: str) -> str:
    options = {"ca_file": str(secrets / "ca.crt"), "token_file": str(secrets / "token"), **query}
    return f"grpcs://127.0.0.1:{port}?" + "&".join(f"{k}={v}" for k, v in options.items() if v)


def test_a_client_with_the_ca_and_the_token_runs_a_study_through_tls(tls_proxy, secrets):
    proxy = open_grpc(_url(tls_proxy, secrets))
    try:
        study = optuna.create_study(study_name="tls", storage=proxy)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    finally:
        proxy.close()


@pytest.mark.parametrize("token", ["none", "wrong"])
def test_a_client_without_the_token_is_refused_with_the_fix(tls_proxy, secrets, tmp_path, token):
    wrong = tmp_path / "token"
    wrong.write_text("not-the-token\n")
    url = _url(tls_proxy, secrets, token_file="" if token == "none" else str(wrong))
    with pytest.raises(StorageConfigError, match="refused this client.*token_file="):
        open_grpc(url, timeout=5)


def test_a_refused_token_is_not_retried_as_an_outage(tls_proxy, secrets, tmp_path):
    """A token rotated under a running worker: the resilient store raises at once, not forever."""
    wrong = tmp_path / "token"
    wrong.write_text("rotated")
    client = ProxyClient(GrpcTarget("127.0.0.1", tls_proxy, tls=True, ca_file=secrets / "ca.crt", token_file=wrong))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        resilient(client).get_all_studies()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED and time.monotonic() - started < 5
    client.close()


def test_plaintext_or_an_unknown_ca_never_reaches_the_tls_proxy(tls_proxy, secrets, tmp_path):
    with pytest.raises(StorageUnavailableError, match="use grpcs://"):
        open_grpc(f"grpc://127.0.0.1:{tls_proxy}", timeout=2)
    other = tls_secrets(tmp_path / "other")  # a CA that did not sign the proxy's certificate
    with pytest.raises(StorageUnavailableError, match=r"check that .*ca\.crt signed its certificate"):
        open_grpc(_url(tls_proxy, secrets, ca_file=str(other / "ca.crt")), timeout=2)


def test_plaintext_is_for_loopback_only_on_both_ends(capsys):
    from search.__main__ import main

    with pytest.raises(StorageConfigError, match="plaintext only on loopback.*grpcs://"):
        parse_grpc_url("grpc://storage-proxy:13000")
    assert parse_grpc_url("grpc://127.0.0.1").port == 13000 and parse_grpc_url("grpc://[::1]:7").port == 7
    with pytest.raises(StorageConfigError, match="plaintext or without authentication"):
        make_server(optuna.storages.InMemoryStorage(), host="0.0.0.0", port=free_port(), threads=1)
    with pytest.raises(StorageConfigError, match="--tls-cert, --tls-key and --token-file"):
        ServerSecurity(tls_cert=Path("c"), tls_key=Path("k")).check("10.0.0.5")  # TLS but no token
    # The command refuses before it opens the store (none is given here).
    assert main(["proxy", "--host", "0.0.0.0", "--storage", "postgresql+psycopg2://u@db/x"]) == 2
    assert "--tls-cert, --tls-key and --token-file" in capsys.readouterr().err


def test_urls_name_their_options_and_bad_ones_are_refused(secrets):
    target = parse_grpc_url(_url(7, secrets, keepalive="5", timeout="9"))
    assert (target.tls, target.port, target.ca_file, target.token_file, target.keepalive_s, target.timeout_s) == (
        True, 7, secrets / "ca.crt", secrets / "token", 5.0, 9.0)
    for bad in ("grpcs://proxy?password=x", "grpcs://proxy?timeout=soon", "grpcs://proxy?keepalive=0",
                "grpc://127.0.0.1?ca_file=/x"):
        with pytest.raises(StorageConfigError):
            parse_grpc_url(bad)
    with pytest.raises(StorageConfigError, match="token_file /nowhere/token: cannot read it"):
        open_grpc("grpcs://127.0.0.1:1?token_file=/nowhere/token", timeout=1)


def test_a_half_open_connection_ends_in_the_deadline_and_the_store_carries_on_after_it(secrets, tls_proxy):
    """A proxy node lost without a TCP reset (the relay frozen: the connection stays up, nothing
    passes). Optuna's client waits on such a call for the kernel's 15 minutes to 2 hours; here the
    call's deadline ends it, and the resilient store's retry goes through once the path is back."""
    with Relay("127.0.0.1", tls_proxy) as relay:
        url = _url(relay.port, secrets, timeout="1", keepalive="1")
        proxy = open_grpc(url)
        optuna.create_study(study_name="half-open", storage=proxy)
        relay.freeze()
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            proxy.get_all_studies()
        assert caught.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        assert time.monotonic() - started < 5

        store = resilient(proxy, max_backoff=1.0)
        threading.Timer(3.0, relay.thaw).start()
        started = time.monotonic()
        assert [s.study_name for s in store.get_all_studies()] == ["half-open"]
        assert 2.5 < time.monotonic() - started < 20
        relay.reset()  # a failover's RST: the next call reconnects
        assert [s.study_name for s in store.get_all_studies()] == ["half-open"]
        assert relay.accepted >= 2
        proxy.close()
