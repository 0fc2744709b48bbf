"""Optuna's gRPC storage proxy, both ends: the client (STORAGE=grpcs://host:port?...) and the server
(`python -m search proxy`).

Workers behind the proxy hold no database connection: each one keeps a gRPC channel to the proxy,
which holds one pool for all of them (README, "Many GPU machines").

What Optuna's proxy does not do and this module adds (README, "Where we wrote our own"):
- **TLS and a token.** Optuna's client opens an insecure channel and its server an insecure port,
  with no authentication: anyone who reaches the port can read, tell or delete every study. Here
  the server takes a certificate and key (`--tls-cert/--tls-key`) and a shared token
  (`--token-file`; every call must carry `authorization: Bearer <token>`, else UNAUTHENTICATED);
  the client verifies the server against a CA file and sends the token:
  `grpcs://storage-proxy:13000?ca_file=/etc/cnn-search/proxy/ca.crt&token_file=/etc/cnn-search/proxy/token`.
  Plaintext (`grpc://`) is for loopback only, on both ends.
- **Keepalive and deadlines.** A proxy lost without a TCP reset (a node gone, a dropped route) froze
  a worker's calls, heartbeat and reaper for the kernel's 15 minutes to 2 hours. Both ends ping
  (HTTP/2 keepalive, `keepalive=` seconds, 30 by default) and every call has a deadline
  (`timeout=` seconds, 60 by default); either ends as an RpcError the resilient store retries.

Optuna's client and server build their channel and port in two small private functions
(`create_insecure_channel`, `make_server`; optuna==5.0.* is pinned). The client here overrides the
one method that builds the channel (`_setup`); the server is written as Optuna's `make_server` is
(`grpc.server` + `add_StorageServiceServicer_to_server`) with credentials, an interceptor and
options added; the servicer and every RPC are Optuna's own. Optuna's storage contract,
run through this proxy (tests/storage/test_optuna_storage_contract.py), pins the rest.
"""

from __future__ import annotations

import collections
import dataclasses
import hmac
import logging
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import grpc
import optuna

from storage._errors import StorageConfigError, StorageUnavailableError
from storage._urls import is_loopback

logger = logging.getLogger("storage.proxy")
GRPC_SCHEMES = ("grpc", "grpcs")
DEFAULT_PORT = 13000
CONNECT_TIMEOUT_S = 15.0  # Reliability row 11: a bad store URL is a clear error within 15 s
KEEPALIVE_S = 30.0  # the client pings an idle channel this often; no answer in 10 s closes it
CALL_TIMEOUT_S = 60.0  # every call's deadline (a study's trials, even thousands, come back in seconds)
MAX_MESSAGE = ("grpc.max_receive_message_length", -1)  # as Optuna's channel: a big study in one reply
AUTHORIZATION = "authorization"
_QUERY_KEYS = {"ca_file", "token_file", "keepalive", "timeout"}


@dataclasses.dataclass(frozen=True)
class GrpcTarget:
    """Where the proxy is and how to reach it, as a store URL says:
    grpc[s]://host[:port][?ca_file=PATH][&token_file=PATH][&keepalive=S][&timeout=S]."""

    host: str
    port: int = DEFAULT_PORT
    tls: bool = False
    ca_file: Path | None = None
    token_file: Path | None = None
    keepalive_s: float = KEEPALIVE_S
    timeout_s: float = CALL_TIMEOUT_S

    @property
    def url(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://{self.host}:{self.port}"

    def token(self) -> str | None:
        return None if self.token_file is None else read_secret(self.token_file, "token_file")

    def credentials(self) -> grpc.ChannelCredentials:
        ca = None if self.ca_file is None else _read_bytes(self.ca_file, "ca_file")
        return grpc.ssl_channel_credentials(root_certificates=ca)

    def options(self) -> list[tuple[str, int]]:
        ms = int(self.keepalive_s * 1000)
        return [MAX_MESSAGE, ("grpc.keepalive_time_ms", ms), ("grpc.keepalive_timeout_ms", min(ms, 10_000)),
                ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]

    def raw_channel(self) -> grpc.Channel:
        address = f"{self.host}:{self.port}"
        if self.tls:
            return grpc.secure_channel(address, self.credentials(), options=self.options())
        return grpc.insecure_channel(address, options=self.options())

    def channel(self) -> grpc.Channel:
        """The channel every call of the client goes through: deadline and token on each call."""
        return grpc.intercept_channel(self.raw_channel(), _CallPolicy(self.timeout_s, self.token()))


def parse_grpc_url(url: str) -> GrpcTarget:
    """The proxy a grpc:// or grpcs:// store URL names; a StorageConfigError naming the fix otherwise."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    example = (f"grpcs://storage-proxy:{DEFAULT_PORT}?ca_file=/etc/cnn-search/proxy/ca.crt"
               "&token_file=/etc/cnn-search/proxy/token")
    if (parts.scheme not in GRPC_SCHEMES or not parts.hostname or parts.username or parts.path not in ("", "/")
            or port == -1):
        raise StorageConfigError(f"{url!r} is not a storage proxy URL; use grpc://127.0.0.1:{DEFAULT_PORT} on "
                                 f"this machine, or {example}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if set(query) - _QUERY_KEYS:
        raise StorageConfigError(f"{url!r}: unknown option(s) {sorted(set(query) - _QUERY_KEYS)}; a storage "
                                 f"proxy URL takes {sorted(_QUERY_KEYS)}, e.g. {example}")
    try:
        keepalive, timeout = float(query.get("keepalive", KEEPALIVE_S)), float(query.get("timeout", CALL_TIMEOUT_S))
    except ValueError:
        raise StorageConfigError(f"{url!r}: keepalive and timeout are seconds, e.g. keepalive=30&timeout=60") from None
    if keepalive <= 0 or timeout <= 0:
        raise StorageConfigError(f"{url!r}: keepalive and timeout must be positive seconds")
    tls = parts.scheme == "grpcs"
    if not tls and not is_loopback(parts.hostname):
        raise StorageConfigError(
            f"{url!r}: the storage proxy speaks plaintext only on loopback (127.0.0.1, localhost); across the "
            f"network use TLS and the proxy's token: {example} (deploy/kubernetes/overlays/proxy mounts both)")
    if not tls and "ca_file" in query:
        raise StorageConfigError(f"{url!r}: ca_file is for grpcs:// (TLS); use grpcs://{parts.hostname}:...")
    return GrpcTarget(host=parts.hostname, port=port or DEFAULT_PORT, tls=tls,
                      ca_file=Path(query["ca_file"]) if query.get("ca_file") else None,
                      token_file=Path(query["token_file"]) if query.get("token_file") else None,
                      keepalive_s=keepalive, timeout_s=timeout)


def read_secret(path: Path, what: str) -> str:
    text = _read_bytes(path, what).decode().strip()
    if not text:
        raise StorageConfigError(f"{what} {path} is empty; put the proxy's token in it (make proxy-secrets)")
    return text


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StorageConfigError(f"{what} {path}: cannot read it ({exc.strerror}); make proxy-secrets writes "
                                 "the CA, the proxy's certificate and key, and the token") from None


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


class _CallPolicy(grpc.UnaryUnaryClientInterceptor):
    """A deadline on every call that has none, and the token in its metadata."""

    def __init__(self, timeout_s: float, token: str | None) -> None:
        self.timeout_s, self.token = timeout_s, token

    def intercept_unary_unary(self, continuation, details, request):
        metadata = list(details.metadata or ())
        if self.token is not None:
            metadata.append((AUTHORIZATION, f"Bearer {self.token}"))
        return continuation(_Details(details.method, details.timeout or self.timeout_s, metadata,
                                     details.credentials, details.wait_for_ready, details.compression), request)


class ProxyClient(optuna.storages.GrpcStorageProxy):
    """Optuna's client with the channel of a GrpcTarget (TLS, token, keepalive, deadlines)."""

    def __init__(self, target: GrpcTarget) -> None:
        self._target = target  # read by _setup, which Optuna's __init__ (and unpickling) calls
        with warnings.catch_warnings():  # experimental in Optuna; we pin optuna==5.0.*
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(host=target.host, port=target.port)

    def _setup(self) -> None:
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        self._channel = self._target.channel()
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)

    def wait_server_ready(self, timeout: float | None = None) -> None:
        try:
            with self._target.raw_channel() as channel:
                grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as e:
            raise ConnectionError("GRPC connection timeout") from e


def open_grpc(url: str, *, timeout: float = CONNECT_TIMEOUT_S) -> optuna.storages.GrpcStorageProxy:
    """A client of the proxy at url, once the proxy answers and takes the token (at most `timeout` s)."""
    target = parse_grpc_url(url)
    target.token()  # a missing or empty token file is a clear error now, not at the first call
    proxy = ProxyClient(target)
    try:
        started = time.monotonic()
        proxy.wait_server_ready(timeout=timeout)
        # The probe on a channel of its own whose calls end within what is left of `timeout`.
        left = max(timeout - (time.monotonic() - started), 1.0)
        probe = ProxyClient(dataclasses.replace(target, timeout_s=min(target.timeout_s, left)))
        try:
            _probe(probe, target)
        finally:
            probe.close()
    except ConnectionError:
        proxy.close()
        tls = (f"; if it runs, check that {target.ca_file or 'the system CAs'} signed its certificate and that "
               f"the certificate names {target.host}") if target.tls else (
            "; if it runs with TLS (--tls-cert), use grpcs:// with ca_file= and token_file=")
        raise StorageUnavailableError(
            f"no storage proxy answered at {target.url} within {timeout:.0f} s{tls}; start it with "
            "`python -m search proxy --storage postgresql+psycopg2://...` (Kubernetes: the storage-proxy "
            "Deployment of deploy/kubernetes/overlays/proxy)"
        ) from None
    except BaseException:
        proxy.close()
        raise
    return proxy


def _probe(proxy: optuna.storages.GrpcStorageProxy, target: GrpcTarget) -> None:
    """One cheap call, so a refused token or a proxy that does not speak TLS is an error here."""
    try:
        proxy.get_study_id_from_name("cnn-search-probe")
    except KeyError:
        pass  # no such study: the proxy answered and took the token
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise StorageConfigError(
                f"the storage proxy at {target.url} refused this client ({exc.details()}); give the proxy's token "
                "as token_file=PATH in the store URL (the file make proxy-secrets wrote)") from None
        raise ConnectionError(str(exc)) from None


# --- the server ---------------------------------------------------------------------------------

# The server lets clients ping every 10 s or more (ours ping every 30 s, idle or not) and pings them
# itself every 60 s, so it drops the calls of a client machine that vanished.
SERVER_OPTIONS = [("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),
                  ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.min_recv_ping_interval_without_data_ms",
                                                                 10_000), ("grpc.http2.max_ping_strikes", 0)]


@dataclasses.dataclass(frozen=True)
class ServerSecurity:
    """The proxy's certificate and key (PEM files), and the token file every call must quote."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    token_file: Path | None = None

    def check(self, host: str) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise StorageConfigError("pass both --tls-cert and --tls-key (PEM files; make proxy-secrets writes them)")
        if not is_loopback(host) and (self.tls_cert is None or self.token_file is None):
            raise StorageConfigError(
                f"the storage proxy would serve every study on {host} in plaintext or without authentication; "
                "pass --tls-cert, --tls-key and --token-file (make proxy-secrets writes them; "
                "deploy/kubernetes/overlays/proxy mounts them), or listen on 127.0.0.1")


class _TokenCheck(grpc.ServerInterceptor):
    """Every call carries `authorization: Bearer <token>`, else it ends UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        given = dict(handler_call_details.invocation_metadata or ()).get(AUTHORIZATION, "")
        if hmac.compare_digest(given.encode(), self.expected):
            return continuation(handler_call_details)
        return grpc.unary_unary_rpc_method_handler(_deny)


def _deny(request, context: grpc.ServicerContext):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")


def make_server(storage: optuna.storages.BaseStorage, *, host: str, port: int, threads: int,
                security: ServerSecurity = ServerSecurity()) -> grpc.Server:
    """Optuna's proxy server (its servicer), with TLS, the token check and keepalive when asked."""
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    security.check(host)
    token = None if security.token_file is None else read_secret(security.token_file, "--token-file")
    server = grpc.server(ThreadPoolExecutor(max_workers=threads), options=SERVER_OPTIONS,
                         interceptors=[_TokenCheck(token)] if token else [])
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)
    address = f"{host}:{port}"
    if security.tls_cert is not None and security.tls_key is not None:
        pair = (_read_bytes(security.tls_key, "--tls-key"), _read_bytes(security.tls_cert, "--tls-cert"))
        server.add_secure_port(address, grpc.ssl_server_credentials([pair]))
    else:
        server.add_insecure_port(address)
    return server
