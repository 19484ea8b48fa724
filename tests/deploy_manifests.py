"""The Kubernetes manifests of deploy/k8s as a cluster would receive them: rendered by the
Kustomize built into kubectl (``kubectl kustomize``), plus the helpers the tests that
read them share (find an object, a container's environment as a pod would see it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.services import missing_service

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"

Obj = dict[str, Any]


def render() -> list[Obj]:
    """Every object ``kubectl apply -k deploy/k8s`` would send."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing_service("kubectl (its built-in Kustomize renders deploy/k8s)", "not on PATH")
    out = subprocess.run([str(kubectl), "kustomize", str(K8S)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, f"kubectl kustomize deploy/k8s failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def pod_env(objs: list[Obj], c: Obj, pod_ip: str = "127.0.0.1") -> dict[str, str]:
    """The variables a container gets: envFrom (ConfigMaps, Secrets) then env, with
    ``status.podIP`` as ``pod_ip``; later entries win, as in Kubernetes."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            env.update(find(objs, "Secret", source["secretRef"]["name"])["stringData"])
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[var["name"]] = pod_ip
        else:
            raise AssertionError(f"unhandled env source {var}")
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command, args and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def command_line(objs: list[Obj], c: Obj, pod_ip: str = "127.0.0.1") -> list[str]:
    env = pod_env(objs, c, pod_ip)
    return [expand(a, env) for a in [*c["command"], *c.get("args", [])]]
