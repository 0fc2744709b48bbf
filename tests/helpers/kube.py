"""deploy/kubernetes rendered without a cluster: `render()` emulates the part of kustomize these
manifests use, object for object what `kubectl kustomize` prints (tests/deploy/test_kubernetes.py
compares the two on every target); fixtures for the base objects and a fresh database."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from helpers.processes import REPO

DEPLOY = REPO / "deploy" / "kubernetes"

# What `kubectl apply -k` is pointed at, under DEPLOY: the base and each overlay.
TARGETS = ["base", "overlays/packed", "overlays/proxy", "overlays/object-store"]

# The generated Secret's content in tests: the real password file is git-ignored and never here.
PLACEHOLDER_PASSWORD = b"placeholder, not the password"

KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "resources", "secretGenerator", "images", "patches"}

CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}

def merge_patch(base, patch):
    """A strategic merge patch, as far as these manifests need one: lists of objects merged by their
    key (volumeMounts by mountPath, the others by name), new items first, `$patch: delete` removing one,
    a null value removing its key."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = {**base, **{k: merge_patch(base[k], v) if k in base else v for k, v in patch.items()}}
        return {k: v for k, v in merged.items() if patch.get(k, ...) is not None}
    key = next((k for k in ("mountPath", "name") if isinstance(base, list) and isinstance(patch, list)
                and all(isinstance(i, dict) and k in i for i in base + patch)), None)
    if key is not None:
        out, new = list(base), []
        for item in patch:
            at = next((n for n, b in enumerate(out) if b[key] == item[key]), None)
            if item.get("$patch") == "delete":
                assert at is not None, f"$patch: delete of {item} matches nothing"
                del out[at]
            elif at is None:
                new.append(item)
            else:
                out[at] = merge_patch(out[at], item)
        return new + out
    return patch

def rename_secrets(node, renames: dict[str, str]):
    if isinstance(node, dict):
        out = {k: rename_secrets(v, renames) for k, v in node.items()}
        if out.get("secretName") in renames:
            out["secretName"] = renames[out["secretName"]]
        if isinstance(out.get("secret"), dict) and out["secret"].get("name") in renames:  # a projected source
            out["secret"] = {**out["secret"], "name": renames[out["secret"]["name"]]}
        for key in ("secretKeyRef", "secretRef"):
            if isinstance(out.get(key), dict) and out[key].get("name") in renames:
                out[key] = {**out[key], "name": renames[out[key]["name"]]}
        return out
    if isinstance(node, list):
        return [rename_secrets(v, renames) for v in node]
    return node

def generated_name(name: str, secret: dict) -> str:
    """kustomize's name for a generated Secret: `name`, a dash and ten characters of the sha256 of
    its kind, type and data (kustomize's hasher, with the name empty as its generators hash it)."""
    encoded = json.dumps({"data": secret["data"], "kind": "Secret", "name": "", "type": secret["type"]},
                         sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return f"{name}-{digest.translate(str.maketrans('013ae', 'ghkmt'))}"

def pod_spec(obj: dict) -> dict | None:
    spec = obj.get("spec", {})
    return spec.get("template", {}).get("spec") if obj["kind"] in ("Job", "Deployment", "StatefulSet") else None

def containers(obj: dict) -> list[dict]:
    pod = pod_spec(obj) or {}
    return pod.get("initContainers", []) + pod.get("containers", [])

def _load(folder: Path, rel: str) -> Path:
    """A file a kustomization names: kustomize reads none outside the kustomization's own folder."""
    path = (folder / rel).resolve()
    assert path.is_relative_to(folder), f"{folder}: {rel} is outside the kustomization's folder"
    return path

def render(folder: Path, _visited: tuple[Path, ...] = ()) -> tuple[list[dict], dict[str, str]]:
    """The objects `kubectl kustomize folder` would print (see the module docstring), and the
    generated Secrets' new names."""
    folder = folder.resolve()
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert set(k) <= KNOWN_FIELDS, f"{folder}: render() does not emulate {set(k) - KNOWN_FIELDS}"
    objects, renames = [], {}
    for entry in k.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            # kustomize refuses a base whose folder holds a kustomization it has visited ("cycle
            # detected"): an overlay cannot sit inside its base's folder.
            visited = (*_visited, folder)
            assert not [v for v in visited if v.is_relative_to(path)], f"{folder}: {entry} holds {folder}: cycle"
            more, names = render(path, visited)
            objects += more
            renames.update(names)
        else:
            objects += [d for d in yaml.safe_load_all(_load(folder, entry).read_text()) if d]
    for gen in k.get("secretGenerator", []):
        assert set(gen) <= {"name", "files"}, gen
        data = {}
        for spec in gen["files"]:
            key, _, rel = spec.rpartition("=")
            assert Path(rel).parts[0] == "secrets", f"{rel}: generated secrets come from the ignored secrets/"
            data[key or Path(rel).name] = base64.b64encode(PLACEHOLDER_PASSWORD).decode()
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data}
        renames[gen["name"]] = name = generated_name(gen["name"], secret)
        objects.append({**secret, "metadata": {"name": name}})
    for patch in k.get("patches", []):
        assert set(patch) == {"path", "target"} and set(patch["target"]) <= {"kind", "name"}, patch
        body = yaml.safe_load(_load(folder, patch["path"]).read_text())
        target = patch["target"]
        hits = [n for n, o in enumerate(objects)
                if o["kind"] == target.get("kind", o["kind"]) and o["metadata"]["name"] == target.get("name")]
        assert len(hits) == 1, f"{patch}: matches {len(hits)} objects"
        if body.get("$patch") == "delete":  # the whole object
            del objects[hits[0]]
            continue
        body = {key: v for key, v in body.items() if key not in ("apiVersion", "kind", "metadata")}
        objects[hits[0]] = merge_patch(objects[hits[0]], body)
    for obj in objects:
        if "namespace" in k and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = k["namespace"]
        for image in k.get("images", []):
            for c in containers(obj):
                name, _, tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
    return [rename_secrets(o, renames) for o in objects], renames

def find(objects: list[dict], kind: str, name: str) -> dict:
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]

def container(obj: dict, name: str) -> dict:
    return next(c for c in containers(obj) if c["name"] == name)

@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(DEPLOY / "base")[0]

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

@pytest.fixture
def store_role_names(tmp_path, postgres_url, fresh_db):
    """The manifests' database roles under this test's own names (StoreRoles), dropped afterwards."""
    yield from store_roles(tmp_path, postgres_url, fresh_db)

ROLE_VARIABLES = ("STORAGE_USER", "STORE_WORKER_ROLE", "STORE_DASHBOARD_ROLE")

def local_command(objects: list[dict], c: dict, roles: StoreRoles | None = None,
                  **overrides: str) -> tuple[list[str], dict[str, str]]:
    """A container's command and environment on this machine: its ConfigMap and env (Kubernetes'
    $(VAR) expanded), then `overrides`; `python` is this interpreter, found first on PATH. The
    database roles the manifests name (cnn_worker, cnn_dashboard) become `roles`' (names of this
    test's own, with password files here); without, every container connects as the owner."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    for name in ROLE_VARIABLES:
        if name in env:
            if roles is None:
                del env[name]
            else:
                env[name] = roles.names[env[name]]
    for name in ("STORE_WORKER_PASSWORD_FILE", "STORE_DASHBOARD_PASSWORD_FILE"):
        if name in env:
            env[name] = str(roles.password_file) if roles is not None else env.pop(name)
    env.update(overrides)
    command = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), part) for part in c["command"]]
    command = [sys.executable if part == "python" else part for part in command]
    full = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    full.pop("STORAGE_PASSWORD_FILE", None)  # the local server trusts us; in the cluster it is the Secret's file
    return command, full

@dataclasses.dataclass
class StoreRoles:
    """The manifests' database roles under names of a test's own (roles are the server's, not a
    database's: tests running side by side must not share them), one password file for both."""

    names: dict[str, str]
    password_file: Path

def store_roles(tmp_path: Path, postgres_url: str, database_url: str):
    """A StoreRoles for a test, its roles dropped afterwards, their grants in `database_url` first
    (a generator for a fixture)."""
    import sqlalchemy

    suffix = uuid.uuid4().hex[:8]
    roles = StoreRoles({"cnn_worker": f"cnn_worker_{suffix}", "cnn_dashboard": f"cnn_dashboard_{suffix}"},
                       tmp_path / "role_password")
    roles.password_file.write_text("placeholder, not a password\n")  # the local server trusts us
    try:
        yield roles
    finally:
        for url, statement in ((database_url, "DROP OWNED BY {}"), (postgres_url, "DROP ROLE {}")):
            admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
            with admin.connect() as conn:
                for role in roles.names.values():
                    if conn.exec_driver_sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'").first():
                        conn.exec_driver_sql(statement.format(f'"{role}"'))
            admin.dispose()

def copy_study_files(tmp_path: Path, name: str) -> Path:
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / f"{name}.yaml").write_text((REPO / "search/studies/mnist_cnn.yaml").read_text())
    return studies

def store_url_like(url: str, like: str) -> str:
    """The local database url in the layout of the ConfigMap's STORAGE `like`."""
    return f"journal+{url}" if urlsplit(like).scheme.startswith("journal+") else url
