"""deploy/kubernetes's security, checked offline on what `render()` makes of the base and every
overlay: each pod meets the `restricted` Pod Security Standard, the NetworkPolicies allow exactly the
flows the service needs (evaluated between the rendered pods, so a label that no policy names any more
fails here), and no image is named by a tag that moves (deploy/kubernetes/README.md, "Security")."""

from __future__ import annotations

import copy
import ipaddress
import re
from typing import NamedTuple

import pytest
import yaml
from helpers.kube import DEPLOY, TARGETS, containers, find, pod_spec, render
from helpers.processes import REPO

# Pod security: the `restricted` Pod Security Standard, checked on every container of every target.

_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
# The one container with a writable root filesystem: NVIDIA's container hooks write into the root of
# the container that gets the GPU (workers.yaml says more).
_WRITABLE_ROOT = {("workers", "worker")}


def _image_name(image: str) -> str:
    """registry.example.com:5000/ml/cnn-search:0.1.0@sha256:... -> cnn-search"""
    return image.partition("@")[0].rsplit("/", 1)[-1].partition(":")[0]


def _scratch(c: dict) -> set[str]:
    """Where a container's process writes outside its volumes: each needs an emptyDir of its own."""
    if _image_name(c["image"]) == "cnn-search":
        return {"/tmp", "/home/worker"}  # the Dockerfile's `worker` home: Keras, matplotlib, CUDA caches
    if c["name"] == "postgres":
        return {"/tmp", "/var/run/postgresql"}  # the entrypoint's files; the server's socket and lock
    return set()  # pg_isready writes nothing


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_meets_the_restricted_pod_security_standard(target):
    objects, _ = render(DEPLOY / target)
    labels = find(objects, "Namespace", "cnn-search")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    workloads = [o for o in objects if pod_spec(o) is not None]
    assert {o["metadata"]["name"] for o in workloads} >= {"postgres", "create-study", "workers", "dashboard"}
    for obj in workloads:
        pod = pod_spec(obj)
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert {key for v in volumes.values() for key in v if key != "name"} <= _RESTRICTED_VOLUMES
        assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), obj["metadata"]["name"]
        assert not [p for c in containers(obj) for p in c.get("ports", []) if "hostPort" in p]
        for c in containers(obj):
            where = f"{target}: {obj['metadata']['name']}/{c['name']}"
            ctx = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) > 0, where
            assert ctx.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            assert ctx.get("allowPrivilegeEscalation") is False and not ctx.get("privileged"), where
            assert ctx.get("capabilities") == {"drop": ["ALL"]}, where
            if (obj["metadata"]["name"], c["name"]) in _WRITABLE_ROOT:
                continue
            assert ctx.get("readOnlyRootFilesystem") is True, where
            scratch = {m["mountPath"] for m in c.get("volumeMounts", []) if "emptyDir" in volumes.get(m["name"], {})}
            assert _scratch(c) <= scratch, (where, _scratch(c) - scratch)


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_as_the_users_their_images_were_built_for(target):
    objects, _ = render(DEPLOY / target)
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", (REPO / "Dockerfile").read_text()).group(1))
    for obj in (o for o in objects if pod_spec(o) is not None):
        ctx = pod_spec(obj)["securityContext"]
        if any(_image_name(c["image"]) == "cnn-search" for c in containers(obj)):
            assert ctx["runAsUser"] == ctx["fsGroup"] == uid, obj["metadata"]["name"]
    # The official PostgreSQL image's `postgres` user, which owns the data directory it initialises.
    ctx = pod_spec(find(objects, "StatefulSet", "postgres"))["securityContext"]
    assert ctx["runAsUser"] == ctx["runAsGroup"] == ctx["fsGroup"] == 999


# Network flows: the rendered NetworkPolicies evaluated as a network plugin applies them, between
# every pair of the rendered pods, a stranger in the namespace (a `kubectl run` pod: labels that no
# policy names), two pods elsewhere (the cluster DNS, and a pod in another namespace labelled as
# our workers) and two hosts outside the cluster, which only ipBlock peers name: an object store on
# a public address, and the cloud's metadata service (whose credentials a pod must not reach).

class _Pod(NamedTuple):
    name: str
    namespace: dict  # the namespace's labels
    labels: dict
    ports: dict  # container port name: number
    address: str | None = None  # a host outside the cluster; pods' own addresses are not modelled


_OUTSIDE = [_Pod("kube-dns", {"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "kube-dns"}, {"dns": 53}),
            _Pod("elsewhere", {"kubernetes.io/metadata.name": "default"},
                 {"app.kubernetes.io/name": "cnn-search", "app.kubernetes.io/component": "worker"}, {"https": 443}),
            _Pod("object-store", {}, {}, {"https": 443}, "52.216.8.10"),
            _Pod("metadata-service", {}, {}, {"http": 80, "https": 443}, "169.254.169.254"),
            _Pod("private-host", {}, {}, {"https": 443}, "10.20.30.40")]


def _selects(selector: dict, labels: dict) -> bool:
    operators = {"In": lambda key, values: labels.get(key) in values,
                 "NotIn": lambda key, values: labels.get(key) not in values,
                 "Exists": lambda key, values: key in labels,
                 "DoesNotExist": lambda key, values: key not in labels}
    expressions = selector.get("matchExpressions", [])
    return (all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
            and all(operators[e["operator"]](e["key"], e.get("values", [])) for e in expressions))


def _peer(peer: dict, pod: _Pod) -> bool:
    if "ipBlock" in peer:  # hosts outside the cluster only (whether it matches pods is the plugin's choice)
        block = peer["ipBlock"]
        return pod.address is not None and ipaddress.ip_address(pod.address) in ipaddress.ip_network(block["cidr"]) \
            and not any(ipaddress.ip_address(pod.address) in ipaddress.ip_network(e) for e in block.get("except", []))
    if pod.address is not None:
        return False
    if "namespaceSelector" in peer:
        in_namespace = _selects(peer["namespaceSelector"], pod.namespace)
    else:
        in_namespace = pod.namespace["kubernetes.io/metadata.name"] == "cnn-search"
    return in_namespace and _selects(peer.get("podSelector", {}), pod.labels)


def _port(ports: list[dict] | None, dst: _Pod, port: int, protocol: str) -> bool:
    def one(p: dict) -> bool:
        if p.get("protocol", "TCP") != protocol:
            return False
        want = dst.ports.get(p["port"]) if isinstance(p.get("port"), str) else p.get("port", port)
        return want is not None and want <= port <= p.get("endPort", want)
    return not ports or any(one(p) for p in ports)


def _lets(policies: list[dict], direction: str, src: _Pod, dst: _Pod, port: int, protocol: str) -> bool:
    """Whether the policies isolating this end of src -> dst (Egress: src, Ingress: dst) let it through."""
    subject, peer = (src, dst) if direction == "Egress" else (dst, src)
    if subject.namespace.get("kubernetes.io/metadata.name") != "cnn-search":
        return True  # another namespace's policies are not ours to model
    rules, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    isolating = [p["spec"] for p in policies
                 if direction in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], subject.labels)]
    return not isolating or any(
        (not rule.get(peers) or any(_peer(x, peer) for x in rule[peers]))
        and _port(rule.get("ports"), dst, port, protocol)
        for spec in isolating for rule in spec.get(rules) or [])


def _model(objects: list[dict]) -> tuple[list[dict], list[_Pod], list[_Pod]]:
    """The NetworkPolicies, the pods in the namespace (the rendered ones and a stranger), all pods."""
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert all("policyTypes" in p["spec"] for p in policies)
    namespace = {**find(objects, "Namespace", "cnn-search")["metadata"]["labels"],
                 "kubernetes.io/metadata.name": "cnn-search"}
    ours = [_Pod(o["metadata"]["name"], namespace, o["spec"]["template"]["metadata"]["labels"],
                 {p["name"]: p["containerPort"] for c in containers(o) for p in c.get("ports", [])})
            for o in objects if pod_spec(o) is not None]
    ours.append(_Pod("stranger", namespace, {"run": "debug"}, {}))
    return policies, ours, ours + _OUTSIDE


def _flows(objects: list[dict]) -> set[tuple[str, str, int, str]]:
    """(client, server, port, protocol) for every connection the policies allow, by workload name."""
    policies, ours, pods = _model(objects)
    probes = sorted({(n, "TCP") for pod in pods for n in pod.ports.values()} | {(53, "UDP")})
    pairs = [(src, dst) for src in pods for dst in pods if src != dst and (src in ours or dst in ours)]
    return {(src.name, dst.name, port, protocol) for src, dst in pairs for port, protocol in probes
            if all(_lets(policies, direction, src, dst, port, protocol) for direction in ("Egress", "Ingress"))}


def _needed(store_clients: set[str], *more: tuple[str, str, int, str]) -> set[tuple[str, str, int, str]]:
    """The store's clients to PostgreSQL, `more`, and DNS for every pod that opens a connection."""
    flows = {(client, "postgres", 5432, "TCP") for client in store_clients} | set(more)
    return flows | {(client, "kube-dns", 53, protocol) for client, *_ in flows for protocol in ("TCP", "UDP")}


@pytest.mark.parametrize(("target", "needed"), [
    ("base", _needed({"create-study", "workers", "dashboard"})),
    ("overlays/packed", _needed({"create-study", "workers", "dashboard"})),
    # The workers reach the proxy only; PostgreSQL takes the proxy instead of them.
    ("overlays/proxy",
     _needed({"create-study", "dashboard", "storage-proxy"}, ("workers", "storage-proxy", 13000, "TCP"))),
    # Artifacts in a bucket: the pods that read or write them reach it over HTTPS, nothing private.
    ("overlays/object-store",
     _needed({"create-study", "workers", "dashboard"},
             *((pod, "object-store", 443, "TCP") for pod in ("create-study", "workers", "dashboard")))),
])
def test_the_network_policies_allow_only_the_flows_the_service_needs(target, needed):
    objects, _ = render(DEPLOY / target)
    deny = find(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}  # no rule: nothing in, nothing out
    clients = {client for client, server, *_ in needed if server == "postgres"}
    # PostgreSQL's own ingress, whatever the clients' egress allows: its clients and no other pod.
    policies, _, pods = _model(objects)
    postgres = next(pod for pod in pods if pod.name == "postgres")
    assert {pod.name for pod in pods if pod != postgres
            and _lets(policies, "Ingress", pod, postgres, 5432, "TCP")} == clients
    allowed = _flows(objects)
    assert allowed == needed, (sorted(allowed - needed), sorted(needed - allowed))


def test_a_pod_whose_labels_no_policy_names_loses_its_flows(base):
    objects = copy.deepcopy(base)
    labels = find(objects, "Deployment", "dashboard")["spec"]["template"]["metadata"]["labels"]
    labels["app.kubernetes.io/component"] = "web"
    allowed = _flows(objects)
    assert ("dashboard", "postgres", 5432, "TCP") not in allowed and ("workers", "postgres", 5432, "TCP") in allowed


# Images: an exact version (or a digest) everywhere, never a tag that moves with new releases.

def _mutable(image: str) -> str | None:
    """Why `image` may name other contents tomorrow; None when it names one version or one digest."""
    ref, _, digest = image.partition("@")
    if digest:
        return None if re.fullmatch(r"sha256:[0-9a-f]{64}", digest) else f"{image}: not a sha256 digest"
    tag = ref.rsplit("/", 1)[-1].partition(":")[2]
    if tag in ("", "latest"):
        return f"{image}: latest"
    if not re.search(r"\d+[.-]\d+", tag):
        return f"{image}: {tag} is no exact version (a major-only tag moves with each minor release)"
    return None


def test_no_image_is_named_by_a_tag_that_moves():
    for moving in ("postgres", "postgres:latest", "postgres:16", "postgres:16-bookworm", "postgres:bookworm",
                   "cnn-search@sha256:abc"):
        assert _mutable(moving), moving
    for pinned in ("postgres:16.13-bookworm", "cnn-search:0.1.0", "cnn-search@sha256:" + "0" * 64,
                   "registry.example.com:5000/ml/cnn-search:2026-11-28"):
        assert _mutable(pinned) is None, pinned
    # kustomize `images:` entries with a digest (render() does not apply digests) pin their image.
    by_digest = {e.get("newName", e["name"]) for k in DEPLOY.rglob("kustomization.yaml")
                 for e in yaml.safe_load(k.read_text()).get("images", []) if "digest" in e}
    images = {(target, c["image"]) for target in TARGETS for o in render(DEPLOY / target)[0]
              for c in containers(o)}
    images |= {("docker-compose.yml", s["image"])
               for s in yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"].values()}
    images |= {("Dockerfile", m) for m in re.findall(r"^FROM\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M)}
    assert {where for where, _ in images} == {*TARGETS, "docker-compose.yml", "Dockerfile"}
    moving = [(where, why) for where, image in sorted(images)
              if image.rpartition(":")[0] not in by_digest and (why := _mutable(image))]
    assert not moving
