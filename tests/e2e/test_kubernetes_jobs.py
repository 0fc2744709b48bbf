"""deploy/kubernetes's containers run as plain processes against the local PostgreSQL: each command,
a worker through the storage proxy, eight workers through the proxy with one SIGKILLed mid-trial."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from helpers.kube import (
    DEPLOY,
    container,
    copy_study_files,
    find,
    local_command,
    pod_spec,
    render,
    store_url_like,
)
from helpers.processes import REPO, free_port, stop, tls_secrets
from optuna.trial import TrialState

TRIAL_SECONDS = 2.0  # the proxy fault test's objective

def _job_env(tmp_path, name, shared_datasets, shared_cache) -> dict[str, str]:
    return {"STUDY": name, "STUDIES_DIR": str(copy_study_files(tmp_path, name)), "DATA_DIR": str(shared_datasets),
            "DATA_CACHE": str(shared_cache), "ARTIFACTS_DIR": str(tmp_path / "artifacts"), "PROFILE": "smoke",
            "TRIALS": "2", "EPOCHS": "1"}

def _answer(url: str, proc: subprocess.Popen, timeout: float = 90) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                assert response.status < 400
                return response.read()
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout} s")

def _complete(url: str, name: str) -> int:
    from storage import close_storage, open_storage

    storage = open_storage(url)
    try:
        return sum(t.state == TrialState.COMPLETE for t in optuna.load_study(study_name=name, storage=storage).trials)
    finally:
        close_storage(storage)

def test_each_containers_command_runs_as_a_plain_process(tmp_path, fresh_db, base, shared_datasets, shared_cache,
                                                         store_role_names):
    name = f"k8s_{uuid.uuid4().hex[:8]}"
    url = store_url_like(fresh_db, find(base, "ConfigMap", "cnn-search")["data"]["STORAGE"])
    job_env = {**_job_env(tmp_path, name, shared_datasets, shared_cache), "STORAGE": url}
    create, workers, dashboard = find(base, "Job", "create-study"), find(base, "Job", "workers"), \
        find(base, "Deployment", "dashboard")
    waits = []
    for obj in (workers, dashboard):  # started first: they wait for the study create-study makes
        command, env = local_command(base, roles=store_role_names, c=container(obj, "wait-for-study"), **job_env)
        waits.append(subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
    try:
        command, env = local_command(base, roles=store_role_names, c=container(create, "wait-for-database"), **job_env)
        assert subprocess.run(command, env=env, timeout=60).returncode == 0
        command, env = local_command(base, roles=store_role_names, c=container(create, "create-study"), **job_env)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        worker_role, dashboard_role = store_role_names.names["cnn_worker"], store_role_names.names["cnn_dashboard"]
        assert f"store roles: {worker_role} (reads and writes rows), {dashboard_role} (reads)" in done.stdout
        for wait in waits:  # they were waiting for the study; now they finish
            assert wait.wait(timeout=90) == 0, wait.stderr.read()[-2000:]
    finally:
        for wait in waits:
            stop(wait)
    command, env = local_command(base, roles=store_role_names, c=container(workers, "worker"), **job_env)
    assert env["STORAGE_USER"] == worker_role  # the worker trains as its role, never as the owner
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _complete(url, name) == 2
    c = container(dashboard, "dashboard")
    port = free_port()
    users = tmp_path / "dashboard_users"  # the Secret dashboard-users, mounted where DASHBOARD_AUTH_FILE says
    users.write_text("admin:placeholder-password\n")
    in_cluster = next(e["value"] for e in c["env"] if e["name"] == "DASHBOARD_AUTH_FILE")
    mount = next(m for m in c["volumeMounts"] if in_cluster.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod_spec(dashboard)["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"].startswith("dashboard-users")
    command, env = local_command(base, roles=store_role_names, c=c, **{**job_env, "DASHBOARD_AUTH_FILE": str(users)})
    command = [{"0.0.0.0": "127.0.0.1", "8080": str(port)}.get(part, part) for part in command]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _answer(f"http://127.0.0.1:{port}{c['readinessProbe']['httpGet']['path']}", proc) == b"ok\n"
        with pytest.raises(urllib.error.HTTPError) as refused:  # no login: 401, nothing of the store
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5)
        assert refused.value.code == 401
        login = base64.b64encode(b"admin:placeholder-password").decode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/studies",
                                         headers={"Authorization": f"Basic {login}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert name in [s["study_name"] for s in json.loads(response.read())["study_summaries"]]
    finally:
        stop(proc)

def _mounted(secrets: Path) -> dict[str, str]:
    """The proxy's and workers' secret mounts (storage-proxy.yaml) mapped to the files on this machine."""
    return {f"/etc/cnn-search/{mount}/{name}": str(secrets / name)
            for mount, names in (("proxy-tls", ("tls.crt", "tls.key")), ("proxy", ("ca.crt", "token")))
            for name in names}

def _proxy_url(port: int, secrets: Path) -> str:
    return f"grpcs://127.0.0.1:{port}?ca_file={secrets / 'ca.crt'}&token_file={secrets / 'token'}"

def _start_proxy(command: list[str], env: dict, port: int, log: Path, secrets: Path) -> subprocess.Popen:
    from storage._grpc import open_grpc

    command = [{"0.0.0.0": "127.0.0.1", "13000": str(port), **_mounted(secrets)}.get(part, part) for part in command]
    proc = subprocess.Popen(command, env=env, cwd=log.parent, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        open_grpc(_proxy_url(port, secrets), timeout=60).close()
    except Exception:
        stop(proc)
        raise AssertionError(f"the proxy did not start: {log.read_text()[-2000:]}") from None
    return proc

def test_a_worker_container_runs_through_the_storage_proxy(tmp_path, fresh_db, shared_datasets, shared_cache,
                                                          store_role_names):
    objects, _ = render(DEPLOY / "overlays/proxy")
    name = f"k8s_{uuid.uuid4().hex[:8]}"
    assert store_url_like(fresh_db, find(objects, "ConfigMap", "cnn-search")["data"]["STORAGE"]) == fresh_db  # RDB
    job_env = {**_job_env(tmp_path, name, shared_datasets, shared_cache), "STORAGE": fresh_db}
    command, env = local_command(objects, roles=store_role_names, c=container(find(objects, "Job", "create-study"), "create-study"), **job_env)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    port = free_port()
    command, env = local_command(objects, roles=store_role_names, c=container(find(objects, "Deployment", "storage-proxy"), "storage-proxy"),
                          **job_env)
    secrets = tls_secrets(tmp_path / "proxy-secrets")
    proxy = _start_proxy(command, env, port, tmp_path / "proxy.log", secrets)
    try:
        worker = container(find(objects, "Job", "workers"), "worker")
        in_cluster = next(e["value"] for e in worker["env"] if e["name"] == "STORAGE")
        assert in_cluster == ("grpcs://storage-proxy:13000?ca_file=/etc/cnn-search/proxy/ca.crt"
                              "&token_file=/etc/cnn-search/proxy/token")
        assert {m["mountPath"] for m in worker["volumeMounts"]} >= {"/etc/cnn-search/proxy"}
        assert "/etc/cnn-search/proxy-tls" not in {m["mountPath"] for m in worker["volumeMounts"]}  # not the key
        command, env = local_command(objects, roles=store_role_names, c=worker, **{**job_env, "STORAGE": _proxy_url(port, secrets)})
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        stop(proxy)
    assert _complete(fresh_db, name) == 2

def test_eight_workers_through_the_proxy_one_sigkilled_mid_trial(tmp_path, fresh_db):
    """Its trial is reaped (grace 5 s) and retried with the same parameters; every lineage ends in
    one finished trial and nothing stays RUNNING. The budget is met and, as these trivial workers take
    no study lock (two store calls, as Optuna's MaxTrialsCallback), overshot by at most workers - 1."""
    from search.study._retries import lineage
    from search.study._study import budget_used
    from storage import close_storage, open_storage

    name, budget, n = f"k8s_{uuid.uuid4().hex[:8]}", 72, 8
    direct = open_storage(fresh_db, create_schema=True)
    optuna.create_study(study_name=name, storage=direct)
    port = free_port()
    secrets = tls_secrets(tmp_path / "proxy-secrets")  # TLS and the token, as in the cluster
    proxy = _start_proxy([sys.executable, "-m", "search", "proxy", "--port", "13000", "--storage", fresh_db,
                          "--tls-cert", str(secrets / "tls.crt"), "--tls-key", str(secrets / "tls.key"),
                          "--token-file", str(secrets / "token")], dict(os.environ), port, tmp_path / "proxy.log",
                         secrets)
    env = {**os.environ, "HEARTBEAT_INTERVAL": "1", "GRACE_PERIOD": "5", "PYTHONUNBUFFERED": "1",
           "TRIAL_SECONDS": str(TRIAL_SECONDS)}
    logs = [tmp_path / f"w{i}.log" for i in range(n)]
    workers = [subprocess.Popen([sys.executable, str(REPO / "tests/helpers/trivial_worker.py"), _proxy_url(port, secrets), name, str(i), str(budget)],
                                env=env, cwd=tmp_path, stdout=open(logs[i], "w"), stderr=subprocess.STDOUT)
               for i in range(n)]
    pids = {w.pid: w for w in workers}

    def trials() -> list[optuna.trial.FrozenTrial]:
        return optuna.load_study(study_name=name, storage=direct).trials

    def wait(condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := condition():
                return value
            time.sleep(0.3)
        pytest.fail(f"timed out waiting for {what}: " + " | ".join(p.read_text()[-300:] for p in logs))

    try:
        wait(lambda: {t.user_attrs.get("pid") for t in trials()} >= set(pids), 60, "every worker to run a trial")
        victim = wait(lambda: next((t for t in trials() if t.state == TrialState.RUNNING and t.user_attrs.get("pid")
                                    in pids and (datetime.now() - t.datetime_start).total_seconds()
                                    < TRIAL_SECONDS / 2), None), 30, "a trial just started")
        pids[victim.user_attrs["pid"]].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        failed = wait(lambda: (t := trials()[victim.number]).state == TrialState.FAIL and t, 30, "the reaper")
        assert failed.user_attrs["fail_reason"] == "stale" and time.monotonic() - killed_at < 5 + 5 / 4 + 5
        survivors = [w for w in workers if w.pid != victim.user_attrs["pid"]]
        codes = [w.wait(timeout=120) for w in survivors]
        assert codes == [0] * (n - 1), [p.read_text()[-1000:] for p in logs]
    finally:
        for w in workers:
            stop(w)
        stop(proxy)
    final = trials()
    close_storage(direct)
    assert not [t.number for t in final if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retries = [t for t in final if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params and retries[0].state == TrialState.COMPLETE
    complete = [t for t in final if t.state == TrialState.COMPLETE]
    assert len({lineage(t) for t in complete}) == len(complete)  # one finished trial per lineage
    assert budget <= len(complete) <= budget + n - 1
    study = optuna.load_study(study_name=name, storage=open_storage(fresh_db))
    assert budget_used(study) == len(complete)  # the reaped trial is counted once, as its retry
    close_storage(study._storage)
    assert "Traceback" not in "".join(p.read_text() for p in logs)
