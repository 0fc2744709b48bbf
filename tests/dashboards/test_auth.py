"""The dashboard's login (issue: a cluster that lets no one in): optuna-dashboard has none and can
delete studies; with DASHBOARD_AUTH_FILE every request but /healthz needs a user and password."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from helpers.processes import free_port

from dashboards.auth import AuthFileError, BasicAuth, read_users


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _call(app, path: str, authorization: str | None = None) -> tuple[str, dict, bytes]:
    seen = {}

    def start_response(status, headers):
        seen.update(status=status, headers=dict(headers))

    environ = {"PATH_INFO": path, **({"HTTP_AUTHORIZATION": authorization} if authorization is not None else {})}
    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


def test_only_a_known_user_with_its_password_reaches_the_dashboard():
    reached = []

    def dashboard(environ, start_response):
        reached.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"studies"]

    app = BasicAuth(dashboard, {"ana": "s3cret:with-colon", "bo": "other"})
    status, headers, _ = _call(app, "/api/studies")
    assert status.startswith("401") and headers["WWW-Authenticate"].startswith('Basic realm="cnn-search dashboard"')
    for wrong in (_basic("ana", "s3cret"), _basic("eve", "s3cret:with-colon"), _basic("bo", ""), "Basic !!!",
                  "Bearer s3cret", base64.b64encode(b"ana").decode(), _basic("", "")):
        assert _call(app, "/api/studies", wrong)[0].startswith("401"), wrong
    assert _call(app, "/api/studies", _basic("ana", "s3cret:with-colon"))[0] == "200 OK"
    assert _call(app, "/healthz") == ("200 OK", {"Content-Type": "text/plain"}, b"ok\n")  # the probe, no data
    assert reached == ["/api/studies"]
    assert _call(BasicAuth(dashboard, None), "/api/studies")[0] == "200 OK"  # no file: the local dashboard


def test_a_users_file_is_read_and_a_bad_one_names_the_fix(tmp_path):
    good = tmp_path / "users"
    good.write_text("# who may look\nana:pw1\n\nbo:pw:2\n")
    assert read_users(good) == {"ana": "pw1", "bo": "pw:2"}
    for text, message in (("ana\n", "line 1: expected user:password"), ("# none\n", "names no user"),
                          (":pw\n", "line 1")):
        good.write_text(text)
        with pytest.raises(AuthFileError, match=message):
            read_users(good)
    with pytest.raises(AuthFileError, match="cannot read it.*openssl rand"):
        read_users(tmp_path / "missing")


def test_the_launcher_with_a_users_file_answers_401_without_a_login(tmp_path):
    from storage import open_storage

    journal = tmp_path / "studies.journal"
    import optuna

    optuna.create_study(study_name="guarded", storage=open_storage(f"journal://{journal}"))
    users = tmp_path / "users"
    users.write_text("ana:pw1\n")
    port = free_port()
    env = {**os.environ, "DASHBOARD_AUTH_FILE": str(users)}
    server = subprocess.Popen([sys.executable, "-m", "dashboards.launcher", "--storage", f"journal://{journal}",
                               "--port", str(port), "--artifacts", str(tmp_path / "artifacts")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                    assert r.read() == b"ok\n"
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the dashboard did not answer within 60 s")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/studies", timeout=5)
        assert refused.value.code == 401 and "Basic" in refused.value.headers["WWW-Authenticate"]
        request = urllib.request.Request(f"{base}/api/studies", headers={"Authorization": _basic("ana", "pw1")})
        with urllib.request.urlopen(request, timeout=5) as r:
            assert [s["study_name"] for s in json.loads(r.read())["study_summaries"]] == ["guarded"]
    finally:
        server.terminate()
        server.wait(timeout=20)
    users.write_text("ana\n")
    done = subprocess.run([sys.executable, "-m", "dashboards.launcher", "--storage", f"journal://{journal}"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "expected user:password" in done.stderr
