"""deploy/kubernetes, checked without a cluster, and the gRPC storage proxy.

Rendering: there is no kustomize binary here, so `render()` emulates the part of kustomize these
manifests use and refuses any other kustomization field: `resources` (files, and bases as
directories), `namespace`, `secretGenerator` (a Secret named with a content hash, references to it
renamed; the password file is never read, a placeholder stands in), `images` (newName/newTag) and
`patches` with an explicit `target`, applied as strategic merge patches (maps merge, lists of named
items merge by name, other lists are replaced). Every object of the base and of each overlay is
then validated with `kubernetes-validate --strict -k 1.33.0` (its offline schemas).

The remaining tests check the shape (GPU limits, failure policy, grace period), that the password
only travels through the Secret, parity with docker-compose.yml, and run each container's command
as a plain process against the local PostgreSQL, as test_compose does for the compose file.

This file is also the trivial worker of the proxy fault test: `python tests/test_kubernetes.py URL
STUDY INDEX BUDGET` runs the service's loop, heartbeat and reaper around a 2-second objective.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest
import yaml
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "kubernetes"
K8S_VERSION = "1.33.0"
OVERLAYS = ["overlays/packed", "overlays/proxy"]
KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "resources", "secretGenerator", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}
TRIAL_SECONDS = 2.0  # the proxy fault test's objective


# --- rendering -----------------------------------------------------------------------------------

def _merge(base, patch):
    """A strategic merge patch, as far as these manifests need one."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: _merge(base[k], v) if k in base else v for k, v in patch.items()}}
    named = isinstance(base, list) and isinstance(patch, list) and all(
        isinstance(i, dict) and "name" in i for i in base + patch)
    if named:
        out = list(base)
        for item in patch:
            at = next((n for n, b in enumerate(out) if b["name"] == item["name"]), None)
            if at is None:
                out.append(item)
            else:
                out[at] = _merge(out[at], item)
        return out
    return patch


def _rename_secrets(node, renames: dict[str, str]):
    if isinstance(node, dict):
        out = {k: _rename_secrets(v, renames) for k, v in node.items()}
        if out.get("secretName") in renames:
            out["secretName"] = renames[out["secretName"]]
        for key in ("secretKeyRef", "secretRef"):
            if isinstance(out.get(key), dict) and out[key].get("name") in renames:
                out[key] = {**out[key], "name": renames[out[key]["name"]]}
        return out
    if isinstance(node, list):
        return [_rename_secrets(v, renames) for v in node]
    return node


def _pod_spec(obj: dict) -> dict | None:
    spec = obj.get("spec", {})
    return spec.get("template", {}).get("spec") if obj["kind"] in ("Job", "Deployment", "StatefulSet") else None


def _containers(obj: dict) -> list[dict]:
    pod = _pod_spec(obj) or {}
    return pod.get("initContainers", []) + pod.get("containers", [])


def render(folder: Path) -> tuple[list[dict], dict[str, str]]:
    """The objects `kubectl kustomize folder` would print (see the module docstring), and the
    generated Secrets' new names."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert set(k) <= KNOWN_FIELDS, f"{folder}: render() does not emulate {set(k) - KNOWN_FIELDS}"
    objects, renames = [], {}
    for entry in k.get("resources", []):
        path = folder / entry
        if path.is_dir():
            more, names = render(path)
            objects += more
            renames.update(names)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in k.get("secretGenerator", []):
        assert set(gen) <= {"name", "files"}, gen
        data = {}
        for spec in gen["files"]:
            key, _, rel = spec.rpartition("=")
            assert Path(rel).parts[0] == "secrets", f"{rel}: generated secrets come from the ignored secrets/"
            data[key or Path(rel).name] = base64.b64encode(b"placeholder, not the password").decode()
        name = f"{gen['name']}-{hashlib.sha256(json.dumps(data).encode()).hexdigest()[:10]}"
        renames[gen["name"]] = name
        objects.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": name},
                        "data": data})
    for patch in k.get("patches", []):
        assert set(patch) == {"path", "target"} and set(patch["target"]) <= {"kind", "name"}, patch
        body = yaml.safe_load((folder / patch["path"]).read_text())
        target = patch["target"]
        hits = [n for n, o in enumerate(objects)
                if o["kind"] == target.get("kind", o["kind"]) and o["metadata"]["name"] == target.get("name")]
        assert len(hits) == 1, f"{patch}: matches {len(hits)} objects"
        body = {key: v for key, v in body.items() if key not in ("apiVersion", "kind", "metadata")}
        objects[hits[0]] = _merge(objects[hits[0]], body)
    for obj in objects:
        if "namespace" in k and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = k["namespace"]
        for image in k.get("images", []):
            for c in _containers(obj):
                name, _, tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
    return [_rename_secrets(o, renames) for o in objects], renames


def find(objects: list[dict], kind: str, name: str) -> dict:
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]


def container(obj: dict, name: str) -> dict:
    return next(c for c in _containers(obj) if c["name"] == name)


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(DEPLOY)[0]


# --- offline validation and shape ----------------------------------------------------------------

def _validator() -> str:
    exe = Path(sys.executable).with_name("kubernetes-validate")
    if not exe.exists():
        pytest.fail("kubernetes-validate is needed to check deploy/kubernetes: pip install -e '.[dev]' "
                    "(kubernetes-validate==1.37.*)")
    return str(exe)


@pytest.mark.parametrize("target", ["", *OVERLAYS])
def test_every_object_validates_strictly_against_kubernetes_1_33(tmp_path, target):
    objects, _ = render(DEPLOY / target)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    result = subprocess.run([_validator(), "--strict", "-k", K8S_VERSION, str(rendered)], capture_output=True,
                            text=True, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "ERROR" not in out and "WARN" not in out, out
    assert out.count(" passed for resource ") == len(objects), out


def test_the_base_has_the_service_shape(base):
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in base)
    assert [k for k in kinds if not k.startswith("Secret/")] == [
        "ConfigMap/cnn-search", "Deployment/dashboard", "Job/create-study", "Job/workers", "Namespace/cnn-search",
        "PersistentVolumeClaim/artifacts", "PersistentVolumeClaim/datasets", "PersistentVolumeClaim/models",
        "Service/dashboard", "Service/postgres", "StatefulSet/postgres"]
    for obj in base:
        labels = obj["metadata"].get("labels", {})
        if obj["kind"] != "Secret":
            assert labels.get("app.kubernetes.io/name") == "cnn-search", obj["metadata"]
        if obj["kind"] not in ("Namespace", "Secret"):
            assert labels.get("app.kubernetes.io/component"), obj["metadata"]
            assert obj["metadata"]["namespace"] == "cnn-search"
    pg = find(base, "StatefulSet", "postgres")
    assert pg["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "pgdata"
    assert "pg_isready" in " ".join(container(pg, "postgres")["readinessProbe"]["exec"]["command"])
    assert find(base, "Service", "dashboard")["spec"]["type"] == "ClusterIP"
    assert find(base, "PersistentVolumeClaim", "artifacts")["spec"]["accessModes"] == ["ReadWriteMany"]
    for kind, name, main in (("Job", "workers", "worker"), ("Job", "create-study", "create-study"),
                             ("Deployment", "dashboard", "dashboard")):
        obj = find(base, kind, name)
        mounts = {m["mountPath"]: m.get("readOnly", False) for m in container(obj, main)["volumeMounts"]}
        assert mounts["/artifacts"] is False and mounts["/data"] is True and mounts["/models_dir"] is True, name
        claims = {v["name"]: v.get("persistentVolumeClaim", {}) for v in _pod_spec(obj)["volumes"]}
        assert claims["artifacts"]["claimName"] == "artifacts" and claims["data"]["readOnly"] is True, name
    # GPU-slot locks in the pod: on the shared volume, pods on two nodes would both want "GPU 0".
    workers = find(base, "Job", "workers")
    assert {"name": "gpu-slots", "mountPath": "/artifacts/gpu-slots"} in container(workers, "worker")["volumeMounts"]


def test_workers_are_a_work_queue_of_gpu_pods(base):
    job = find(base, "Job", "workers")
    spec, pod = job["spec"], _pod_spec(job)
    assert isinstance(spec["parallelism"], int) and "completions" not in spec
    worker = container(job, "worker")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["restartPolicy"] == "Never" and spec["backoffLimit"] >= 1
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]}} in rules
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    # The worker exits 2 on a study that does not exist yet: the pod waits for create-study first.
    assert "python -m search status" in " ".join(container(job, "wait-for-study")["command"])


def test_the_grace_period_outlasts_an_epoch_on_a_gpu(base):
    """BENCHMARKS.md's slowest GPU epoch: seed 002's VGG base on an H100, first epoch 17.9 s
    (compilation included); the compose file's stop_grace_period is 15m."""
    text = (REPO / "BENCHMARKS.md").read_text()
    slowest = max(float(s) for s in re.findall(r"first epoch ([\d.]+) s", text))
    grace = _pod_spec(find(base, "Job", "workers"))["terminationGracePeriodSeconds"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["worker"]
    assert compose["stop_grace_period"] == "15m"
    assert grace >= 900 and grace > 10 * slowest, (grace, slowest)


_URL_PASSWORD = re.compile(r"[a-z0-9+.-]+://[^/\s:@'\"]+:[^/\s@'\"]+@", re.I)
_PASSWORD_VALUE = re.compile(r"([\w.-]*password[\w.-]*)[ \t]*[:=][ \t]*([^\s#]+)", re.I)


def test_the_password_only_travels_through_the_secret(base):
    for target in ["", *OVERLAYS]:
        objects, renames = render(DEPLOY / target)
        secret = renames["postgres-password"]
        config = find(objects, "ConfigMap", "cnn-search")["data"]
        for obj in objects:
            pod = _pod_spec(obj)
            if pod is None:
                continue
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in _containers(obj):
                own = {e["name"]: e.get("value") for e in c.get("env", [])}
                env = {**(config if c.get("envFrom") else {}), **own}
                assert not [e for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
                            and e["valueFrom"]["secretKeyRef"]["name"] != secret]
                if "STORAGE" in env and env["STORAGE"]:
                    assert urlsplit(env["STORAGE"]).password is None, (target, c["name"])
                for name, value in env.items():
                    if "PASSWORD" in name.upper():
                        assert name.endswith("_FILE") and value == "/run/secrets/postgres_password", (c["name"], name)
                        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/run/secrets")
                        assert volumes[mount["name"]]["secret"]["secretName"] == secret, c["name"]
    for path in DEPLOY.rglob("*"):
        if path.is_file() and "secrets" not in path.relative_to(DEPLOY).parts:
            text = path.read_text()
            assert not _URL_PASSWORD.search(text), path
            for key, value in _PASSWORD_VALUE.findall(text):
                assert "/" in value or value.startswith(("$", "{", "`")), (path, key, value)
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/kubernetes/secrets/postgres_password"], cwd=REPO)
    assert ignored.returncode == 0, "the password file must be git-ignored"
    tracked = subprocess.run(["git", "ls-files", "deploy"], cwd=REPO, capture_output=True, text=True).stdout
    assert "secrets/" not in tracked


def _compose_value(text: str) -> str:
    """A compose value with ${STUDY...} as Kubernetes' $(STUDY) and ${VAR:-default} as its default."""
    text = re.sub(r"\$\{STUDY[^}]*\}", "$(STUDY)", text)
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def test_images_commands_and_variables_are_the_compose_files(base):
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    config = find(base, "ConfigMap", "cnn-search")["data"]
    for service, kind, name, main in (("create-study", "Job", "create-study", "create-study"),
                                      ("worker", "Job", "workers", "worker"),
                                      ("dashboard", "Deployment", "dashboard", "dashboard")):
        c = container(find(base, kind, name), main)
        assert c["command"] == [_compose_value(part) for part in services[service]["command"]], service
        assert c["image"] == services[service]["image"] == "cnn-search:latest"
        assert c["envFrom"] == [{"configMapRef": {"name": "cnn-search"}}]
        compose_mounts = {v.split(":")[1]: v.endswith(":ro") for v in map(_compose_value, services[service]["volumes"])}
        assert {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]
                if m["mountPath"] in compose_mounts} == compose_mounts, service
    for key, value in services["worker"]["environment"].items():
        assert config[key] == _compose_value(str(value)), key
    pg = container(find(base, "StatefulSet", "postgres"), "postgres")
    assert pg["image"] == services["postgres"]["image"]
    assert set(services["postgres"]["environment"]) <= {e["name"] for e in pg["env"]}
    assert config["STUDY"] and "$(STUDY)" in container(find(base, "Job", "workers"), "worker")["command"]


def test_the_packed_overlay_only_packs_three_workers_per_gpu(base):
    packed, _ = render(DEPLOY / "overlays/packed")
    worker = container(find(packed, "Job", "workers"), "worker")
    assert {"name": "WORKERS_PER_GPU", "value": "3"} in worker["env"]
    del worker["env"]
    assert packed == base


def test_the_proxy_overlay_sends_only_the_workers_through_the_proxy(base):
    objects, _ = render(DEPLOY / "overlays/proxy")
    config = find(objects, "ConfigMap", "cnn-search")["data"]
    assert urlsplit(config["STORAGE"]).scheme == "postgresql+psycopg2"  # the RDB layout behind the proxy
    service = find(objects, "Service", "storage-proxy")
    proxy = container(find(objects, "Deployment", "storage-proxy"), "storage-proxy")
    assert proxy["command"] == ["python", "-m", "search", "proxy", "--host", "0.0.0.0", "--port", "13000"]
    assert proxy["image"] == "cnn-search:latest" and service["spec"]["ports"][0]["port"] == 13000
    workers = find(objects, "Job", "workers")
    for name in ("worker", "wait-for-study"):
        assert {"name": "STORAGE", "value": "grpc://storage-proxy:13000"} in container(workers, name)["env"]
    for kind, name in (("Job", "create-study"), ("Deployment", "dashboard")):
        assert find(objects, kind, name) == find(base, kind, name)


# --- the proxy's own checks ----------------------------------------------------------------------

def test_the_proxy_refuses_a_journal_store_and_names_what_to_use(capsys):
    from search.__main__ import main

    assert main(["proxy", "--storage", "journal+postgresql+psycopg2://optuna@db:5432/optuna"]) == 2
    err = capsys.readouterr().err
    assert "journal" in err and "postgresql+psycopg2://" in err
    assert main(["proxy", "--storage", "journal:///tmp/x.journal"]) == 2
    assert main(["proxy"]) == 2 and "no store: pass --storage or set STORAGE" in capsys.readouterr().err


def test_grpc_urls_are_parsed_and_a_missing_proxy_is_a_clear_error():
    from storage import StorageConfigError, StorageUnavailableError
    from storage._grpc import open_grpc, parse_grpc_url

    assert parse_grpc_url("grpc://storage-proxy:13000") == ("storage-proxy", 13000)
    assert parse_grpc_url("grpc://proxy") == ("proxy", 13000)
    for bad in ("grpc://u:p@proxy:1", "grpc://proxy:1/db", "grpc://proxy:x", "http://proxy:1"):
        with pytest.raises(StorageConfigError):
            parse_grpc_url(bad)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=r"grpc://127\.0\.0\.1:\d+"):
        open_grpc(f"grpc://127.0.0.1:{_free_port()}", timeout=1)
    assert time.monotonic() - started < 10


# --- the containers' commands as plain processes -------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fresh_db(postgres_url):
    """A database of its own on the local server (postgresql+psycopg2://...), dropped afterwards."""
    import sqlalchemy

    name = f"k8s_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sqlalchemy.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


def _local(objects: list[dict], c: dict, **overrides: str) -> tuple[list[str], dict[str, str]]:
    """A container's command and environment on this machine: its ConfigMap and env (Kubernetes'
    $(VAR) expanded), then `overrides`; `python` is this interpreter, found first on PATH."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    env.update(overrides)
    command = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), part) for part in c["command"]]
    command = [sys.executable if part == "python" else part for part in command]
    full = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    full.pop("STORAGE_PASSWORD_FILE", None)  # the local server trusts us; in the cluster it is the Secret's file
    return command, full


def _study_files(tmp_path: Path, name: str) -> Path:
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / f"{name}.yaml").write_text((REPO / "search/studies/mnist_cnn.yaml").read_text())
    return studies


def _layout(url: str, like: str) -> str:
    """The local database url in the layout of the ConfigMap's STORAGE `like`."""
    return f"journal+{url}" if urlsplit(like).scheme.startswith("journal+") else url


def _job_env(tmp_path, name, shared_datasets, shared_cache) -> dict[str, str]:
    return {"STUDY": name, "STUDIES_DIR": str(_study_files(tmp_path, name)), "DATA_DIR": str(shared_datasets),
            "DATA_CACHE": str(shared_cache), "ARTIFACTS_DIR": str(tmp_path / "artifacts"), "PROFILE": "smoke",
            "TRIALS": "2", "EPOCHS": "1"}


@pytest.mark.postgres
def test_the_failure_policys_exit_code_is_the_workers_for_a_missing_study(tmp_path, fresh_db, base):
    from storage import close_storage, open_storage

    job = find(base, "Job", "workers")
    fail_job = next(r for r in job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob")
    name = f"k8s_{uuid.uuid4().hex[:8]}"
    url = _layout(fresh_db, find(base, "ConfigMap", "cnn-search")["data"]["STORAGE"])
    close_storage(open_storage(url, create_schema=True))  # a store with its tables and no study
    command, env = _local(base, container(job, "worker"), STORAGE=url, STUDY=name,
                          STUDIES_DIR=str(_study_files(tmp_path, name)), ARTIFACTS_DIR=str(tmp_path / "artifacts"))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode in fail_job["onExitCodes"]["values"] and result.returncode == 2, result.stderr[-2000:]
    assert "does not exist" in result.stderr


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


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _complete(url: str, name: str) -> int:
    from storage import close_storage, open_storage

    storage = open_storage(url)
    try:
        return sum(t.state == TrialState.COMPLETE for t in optuna.load_study(study_name=name, storage=storage).trials)
    finally:
        close_storage(storage)


@pytest.mark.slow
@pytest.mark.postgres
def test_each_containers_command_runs_as_a_plain_process(tmp_path, fresh_db, base, shared_datasets, shared_cache):
    name = f"k8s_{uuid.uuid4().hex[:8]}"
    url = _layout(fresh_db, find(base, "ConfigMap", "cnn-search")["data"]["STORAGE"])
    job_env = {**_job_env(tmp_path, name, shared_datasets, shared_cache), "STORAGE": url}
    create, workers, dashboard = find(base, "Job", "create-study"), find(base, "Job", "workers"), \
        find(base, "Deployment", "dashboard")
    waits = []
    for obj in (workers, dashboard):  # started first: they wait for the study create-study makes
        command, env = _local(base, container(obj, "wait-for-study"), **job_env)
        waits.append(subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
    try:
        command, env = _local(base, container(create, "wait-for-database"), **job_env)
        assert subprocess.run(command, env=env, timeout=60).returncode == 0
        command, env = _local(base, container(create, "create-study"), **job_env)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        for wait in waits:  # they were waiting for the study; now they finish
            assert wait.wait(timeout=90) == 0, wait.stderr.read()[-2000:]
    finally:
        for wait in waits:
            _stop(wait)
    command, env = _local(base, container(workers, "worker"), **job_env)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _complete(url, name) == 2
    c = container(dashboard, "dashboard")
    port = _free_port()
    command, env = _local(base, c, **job_env)
    command = [{"0.0.0.0": "127.0.0.1", "8080": str(port)}.get(part, part) for part in command]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = _answer(f"http://127.0.0.1:{port}{c['readinessProbe']['httpGet']['path']}", proc)
        assert name in [s["study_name"] for s in json.loads(body)["study_summaries"]]
    finally:
        _stop(proc)


def _start_proxy(command: list[str], env: dict, port: int, log: Path) -> subprocess.Popen:
    from storage._grpc import open_grpc

    command = [{"0.0.0.0": "127.0.0.1", "13000": str(port)}.get(part, part) for part in command]
    proc = subprocess.Popen(command, env=env, cwd=log.parent, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        open_grpc(f"grpc://127.0.0.1:{port}", timeout=60).close()
    except Exception:
        _stop(proc)
        raise AssertionError(f"the proxy did not start: {log.read_text()[-2000:]}") from None
    return proc


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_container_runs_through_the_storage_proxy(tmp_path, fresh_db, shared_datasets, shared_cache):
    objects, _ = render(DEPLOY / "overlays/proxy")
    name = f"k8s_{uuid.uuid4().hex[:8]}"
    assert _layout(fresh_db, find(objects, "ConfigMap", "cnn-search")["data"]["STORAGE"]) == fresh_db  # RDB
    job_env = {**_job_env(tmp_path, name, shared_datasets, shared_cache), "STORAGE": fresh_db}
    command, env = _local(objects, container(find(objects, "Job", "create-study"), "create-study"), **job_env)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    port = _free_port()
    command, env = _local(objects, container(find(objects, "Deployment", "storage-proxy"), "storage-proxy"),
                          **job_env)
    proxy = _start_proxy(command, env, port, tmp_path / "proxy.log")
    try:
        worker = container(find(objects, "Job", "workers"), "worker")
        in_cluster = next(e["value"] for e in worker["env"] if e["name"] == "STORAGE")
        assert in_cluster == "grpc://storage-proxy:13000"
        command, env = _local(objects, worker, **{**job_env, "STORAGE": f"grpc://127.0.0.1:{port}"})
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        _stop(proxy)
    assert _complete(fresh_db, name) == 2


# --- 8 workers through the proxy, one killed -----------------------------------------------------

@pytest.mark.slow
@pytest.mark.postgres
def test_eight_workers_through_the_proxy_one_sigkilled_mid_trial(tmp_path, fresh_db):
    """Its trial is reaped (grace 5 s) and retried with the same parameters; every lineage ends in
    one finished trial and nothing stays RUNNING. The budget is met and overshot by at most
    workers - 1 (the budget check and the ask are two store calls; README, Reliability row 15)."""
    from search.study._retries import lineage
    from search.study._study import budget_used
    from storage import close_storage, open_storage

    name, budget, n = f"k8s_{uuid.uuid4().hex[:8]}", 72, 8
    direct = open_storage(fresh_db, create_schema=True)
    optuna.create_study(study_name=name, storage=direct)
    port = _free_port()
    proxy = _start_proxy([sys.executable, "-m", "search", "proxy", "--port", "13000", "--storage", fresh_db],
                         dict(os.environ), port, tmp_path / "proxy.log")
    env = {**os.environ, "HEARTBEAT_INTERVAL": "1", "GRACE_PERIOD": "5", "PYTHONUNBUFFERED": "1"}
    logs = [tmp_path / f"w{i}.log" for i in range(n)]
    workers = [subprocess.Popen([sys.executable, __file__, f"grpc://127.0.0.1:{port}", name, str(i), str(budget)],
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
            _stop(w)
        _stop(proxy)
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


def _trivial_worker(url: str, name: str, index: int, budget: int) -> int:
    """The service's store, loop, heartbeat and reaper (HEARTBEAT_INTERVAL, GRACE_PERIOD) around a
    2-second objective that records which process runs it (as tests/trivial_worker.py, slower)."""
    import logging
    import types

    from search.study._store import resilient
    from search.worker._liveness import Background, Liveness
    from search.worker._loop import LoopLimits, run_loop
    from search.worker._signals import StopFlag
    from storage import open_storage

    logging.basicConfig(level=logging.WARNING, format=f"[k{index}] %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=resilient(open_storage(url)),
                              sampler=optuna.samplers.RandomSampler(seed=index))

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("pid", os.getpid())
        x = trial.suggest_float("x", -10, 10)
        time.sleep(TRIAL_SECONDS)
        return x * x

    spec = types.SimpleNamespace(trials=budget, timeout_s=None, max_consecutive_failures=5)
    liveness = Liveness(interval=float(os.environ["HEARTBEAT_INTERVAL"]), grace=float(os.environ["GRACE_PERIOD"]))
    with Background(study, liveness) as background:
        run_loop(study, spec, objective, StopFlag().install(), background, f"k{index}", LoopLimits(poll_s=0.5))
    return 0


if __name__ == "__main__":
    sys.exit(_trivial_worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
