"""deploy/: the Kubernetes manifests, rendered by kubectl's Kustomize, validate against the
Kubernetes 1.37 schemas (kubernetes-validate, strict: an unknown field fails) and the
RayCluster's fields against KubeRay's documented spec and its pod templates as Kubernetes
PodTemplates; they point at our real entry points, routes and
settings; the Dockerfile, read by Docker's own parser, keeps its promises. Nothing here
talks to a cluster or builds an image (see docs/deploy.md); the processes the manifests
start are run for real in tests/integration/test_deploy_processes.py."""

from __future__ import annotations

import copy
import inspect
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import yaml

from stratum.config import load_settings
from stratum.gateway.local import LocalRoutes
from stratum.gateway.server import GatewayServer
from tests.deploy_manifests import (
    DEPLOY,
    K8S,
    ROOT,
    Obj,
    command_line,
    container,
    find,
    pod_env,
    render,
)

K8S_VERSION = "1.37.0"


@pytest.fixture(scope="module")
def objs() -> list[Obj]:
    return render()


# The RayCluster's own fields, as KubeRay's documentation gives them (written here, not
# copied from its CRD): every field we set, and nothing else; each pod template inside is
# then validated as a Kubernetes PodTemplate by kubernetes-validate.
_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
_TEMPLATE = {"type": "object", "required": ["spec"]}
_GROUP = {"type": "object", "additionalProperties": False,
          "required": ["groupName", "rayStartParams", "template"],
          "properties": {"groupName": {"type": "string"}, "replicas": {"type": "integer"},
                         "minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"},
                         "rayStartParams": _PARAMS, "template": _TEMPLATE}}
RAYCLUSTER = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayCluster"},
        "metadata": {"type": "object"},
        "spec": {"type": "object", "additionalProperties": False,
                 "required": ["rayVersion", "headGroupSpec"],
                 "properties": {
                     "rayVersion": {"type": "string"},
                     "enableInTreeAutoscaling": {"type": "boolean"},
                     "headGroupSpec": {"type": "object", "additionalProperties": False,
                                       "required": ["rayStartParams", "template"],
                                       "properties": {"rayStartParams": _PARAMS,
                                                      "serviceType": {"type": "string"},
                                                      "template": _TEMPLATE}},
                     "workerGroupSpecs": {"type": "array", "items": _GROUP}}}},
}


@pytest.fixture(scope="module")
def raycluster_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(RAYCLUSTER)


def test_every_manifest_file_is_applied() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


def test_objects_validate_against_kubernetes_schemas(objs: list[Obj]) -> None:
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
    assert kinds == sorted([
        "Namespace/stratum", "ServiceAccount/stratum", "ConfigMap/stratum-config",
        "Secret/stratum-secrets", "Deployment/stratum-control", "Service/stratum-control",
        "Deployment/stratum-gateway", "Service/stratum-gateway",
        "HorizontalPodAutoscaler/stratum-gateway", "PodDisruptionBudget/stratum-gateway",
        "Deployment/stratum-learner", "RayCluster/stratum-ray"])
    for o in objs:
        if o["kind"] != "RayCluster":
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
    # The validator is not a rubber stamp: a misspelt probe field fails.
    bad = copy.deepcopy(find(objs, "Deployment", "stratum-gateway"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_raycluster_has_kuberays_fields_and_valid_pod_templates(
        objs: list[Obj], raycluster_validator: jsonschema.Draft7Validator) -> None:
    rc = find(objs, "RayCluster", "stratum-ray")
    assert rc["apiVersion"] == "ray.io/v1"
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in raycluster_validator.iter_errors(rc)]
    assert errors == []
    spec = rc["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate",
             "metadata": {"name": "ray", "namespace": "stratum"},
             "template": group["template"]}, K8S_VERSION, strict=True)
    bad = copy.deepcopy(rc)
    bad["spec"]["workerGroupSpecs"][0]["minReplica"] = 1  # typo of minReplicas
    assert not raycluster_validator.is_valid(bad)
    bad = copy.deepcopy(rc)
    bad["spec"]["workerGroupSpecs"][0]["replicas"] = "three"
    assert not raycluster_validator.is_valid(bad)
    # The Ray in the image is the one the RayCluster announces.
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"ray[train]=={rc['spec']['rayVersion']}" in pins["optional-dependencies"]["ray"]


def test_selectors_and_targets_match(objs: list[Obj]) -> None:
    pods = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
            for o in objs if o["kind"] == "Deployment"}
    for name, labels in pods.items():
        selector = find(objs, "Deployment", name)["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), name
    for kind in ("Service", "PodDisruptionBudget"):
        for o in (o for o in objs if o["kind"] == kind):
            sel = o["spec"]["selector"]
            sel = sel.get("matchLabels", sel)
            matched = [n for n, labels in pods.items() if sel.items() <= labels.items()]
            assert matched == [o["metadata"]["name"]], f"{kind} {o['metadata']['name']}"
    hpa = find(objs, "HorizontalPodAutoscaler", "stratum-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "stratum-gateway"}
    gw = container(find(objs, "Deployment", "stratum-gateway"))
    assert gw["resources"]["requests"]["cpu"], "a CPU utilisation target needs a CPU request"


def test_gateway_probes_are_its_real_routes_and_it_drains(objs: list[Obj]) -> None:
    dep = find(objs, "Deployment", "stratum-gateway")
    c = container(dep)
    own = _gateway_get_routes()
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready" in own
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live" in own
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    line = command_line(objs, c)
    assert ports[c["readinessProbe"]["httpGet"]["port"]] == int(line[line.index("--port") + 1])
    assert line[line.index("--host") + 1] == "0.0.0.0"
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = inspect.signature(GatewayServer.__init__).parameters["grace"].default
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > \
        float(pre_stop[1]) + grace


def _gateway_get_routes() -> set[str]:
    class _Gw:  # LocalRoutes only reads the table's keys here
        pass

    return {path for method, path in LocalRoutes(_Gw()).table if method == "GET"}  # type: ignore[arg-type]


def test_commands_are_our_entry_points_with_real_flags(objs: list[Obj]) -> None:
    for name in ("stratum-control", "stratum-gateway", "stratum-learner"):
        line = command_line(objs, container(find(objs, "Deployment", name)))
        assert line[:2] == ["tini", "--"], name
        if line[2] == "python":
            assert line[3:5] == ["-P", "-m"]
            module, flags = line[5], [a for a in line[6:] if a.startswith("--")]
            usage = _help([sys.executable, "-P", "-m", module, "--help"])
        else:
            assert line[2:4] == ["stratum", "learn"], name
            exe = Path(sys.executable).with_name("stratum")
            usage, flags = _help([str(exe), "learn", "--help"]), []
            assert re.search(r"learn \[OPTIONS\] \S*name", usage, re.I) and len(line) == 5
        for flag in flags:
            assert flag in usage, f"{name}: {flag} is not an option of {line[2:]}"


def test_control_plane_pod_is_a_ray_node_of_the_raycluster(objs: list[Obj]) -> None:
    """A Ray driver must run on a node: the control plane's sidecar joins the RayCluster
    at the address the settings name (KubeRay's head service, the head's GCS port)."""
    pod = find(objs, "Deployment", "stratum-control")["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: up before, down after
    line = command_line(objs, sidecar, pod_ip="10.1.2.3")
    address = find(objs, "ConfigMap", "stratum-config")["data"]["STRATUM_CLUSTER__ADDRESS"]
    assert line[:3] == ["ray", "start", "--block"]
    assert f"--address={address}" in line and "--node-ip-address=10.1.2.3" in line
    assert "--num-cpus=0" in line  # replicas and training workers never land here
    usage = _help([str(Path(sys.executable).with_name("ray")), "start", "--help"])
    for flag in (a.split("=")[0] for a in line[2:]):
        assert flag in usage, flag
    rc = find(objs, "RayCluster", "stratum-ray")
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    gcs = {p["name"]: p["containerPort"] for p in head["ports"]}["gcs-server"]
    assert address == f"{rc['metadata']['name']}-head-svc:{gcs}"
    # Ray's sockets and object store are files the driver must see.
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    control = container(find(objs, "Deployment", "stratum-control"))
    assert {m["mountPath"]: m["name"] for m in control["volumeMounts"]}.items() >= \
        mounts.items() == {"/tmp": "tmp", "/dev/shm": "shm"}.items()


def _help(args: list[str]) -> str:
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False,
                         env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_config_map_and_secret_make_the_settings(objs: list[Obj],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    env = pod_env(objs, container(find(objs, "Deployment", "stratum-control")))
    for key in [k for k in os.environ if k.startswith("STRATUM_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    assert str(s.home) == "/var/lib/stratum/home"
    assert s.metadata_url and s.metadata_url.startswith("postgresql+psycopg://")
    assert s.artifact_url == "s3://stratum/artifacts"
    assert s.queue_url and s.queue_url.startswith("redis://")
    assert s.gateway.rate_limit_url and s.gateway.rate_limit_url.startswith("redis://")
    assert s.artifact_options == {
        "key": "REPLACE-ME", "secret": "REPLACE-ME",
        "client_kwargs": {"endpoint_url": "http://minio.storage.svc:9000",
                          "region_name": "us-east-1"}}
    assert s.gateway.require_auth is True
    cluster = s.cluster  # type: ignore[attr-defined]
    assert (cluster.backend, cluster.address) == ("ray", "stratum-ray-head-svc:6379")
    # Credentials are in the Secret only.
    config = find(objs, "ConfigMap", "stratum-config")["data"]
    assert not [k for k in config if k.endswith(("_URL__KEY", "__SECRET", "METADATA_URL"))]


def test_pods_run_unprivileged(objs: list[Obj]) -> None:
    templates = [o["spec"]["template"] for o in objs if o["kind"] == "Deployment"]
    rc = find(objs, "RayCluster", "stratum-ray")["spec"]
    templates += [rc["headGroupSpec"]["template"],
                  *(g["template"] for g in rc["workerGroupSpecs"])]
    for t in templates:
        spec = t["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            assert c["image"] == "stratum:0.1.0"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_dockerfile_keeps_its_promises() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    cmds = dockerfile.parse_string(text)
    args = {c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1]
            for c in cmds if c.cmd == "ARG" and "=" in c.value[0]}
    torch_pin = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())
                     ["project"]["dependencies"] if d.startswith("torch"))
    assert f"torch=={args['TORCH_VERSION']}" == torch_pin
    assert args["TORCH_INDEX"].endswith("/cpu")
    runs = [c.value[0] for c in cmds if c.cmd == "RUN"]
    pips = [r for r in runs if "pip install" in r]
    # torch alone first, from the CPU index; every later pip install names it again.
    assert '--index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"' in pips[0]
    assert all('"torch==${TORCH_VERSION}"' in r for r in pips[1:])
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    wanted = pips[1].split('".[', 1)[1].split(']"', 1)[0].split(",")
    assert set(wanted) <= set(extras)
    user = [c.value[0] for c in cmds if c.cmd == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert args["UID"] != "0"
    for c in (c for c in cmds if c.cmd == "COPY"):
        for src in c.value[:-1]:
            assert (ROOT / src).exists(), src
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"!pyproject.toml", "!README.md", "!stratum/"} <= set(ignore)
    health = next(c for c in cmds if c.cmd == "HEALTHCHECK")
    assert health.value[0] == "CMD" and "STRATUM_HEALTH_URL" in health.value[-1]
    env = dict(zip(*[iter(next(c for c in cmds if c.cmd == "ENV").value)] * 2, strict=True))
    cmd = next(c for c in cmds if c.cmd == "CMD").value
    assert cmd[:4] == ("python", "-P", "-m", "stratum.control")
    port = cmd[cmd.index("--port") + 1]
    assert env["STRATUM_HEALTH_URL"] == f"http://127.0.0.1:{port}/health"
    assert next(c for c in cmds if c.cmd == "ENTRYPOINT").value == ("tini", "--")
