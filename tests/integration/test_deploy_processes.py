"""The processes deploy/k8s starts, started here as Kubernetes would start them: the
command and args of the rendered manifests, ``$(VAR)`` expanded, the environment of the
ConfigMap and the Secret. Only what a pod would get from the cluster is replaced: the
service addresses (this machine's PostgreSQL and Redis, a moto S3 server for the bucket),
the home, free ports instead of 8090/8000, local processes instead of the RayCluster, and
no ``tini`` in front (it is PID 1 in the image only). Then the probes of the manifests are
asked on the ports they name, the image's HEALTHCHECK command is run against the control
plane, and SIGTERM (what the kubelet sends after preStop) must stop each process within
the pod's terminationGracePeriodSeconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dockerfile
import httpx
import pytest

from tests.deploy_manifests import DEPLOY, Obj, command_line, container, find, pod_env, render
from tests.services import free_port, started


@pytest.fixture(scope="module")
def objs() -> list[Obj]:
    return render()


@pytest.fixture
def services(pg_url: str, redis_url: str, s3_server: str, tmp_path: Path) -> dict[str, str]:
    bucket = f"stratum-{uuid.uuid4().hex[:8]}"
    httpx.put(f"{s3_server}/{bucket}").raise_for_status()
    return {
        "STRATUM_HOME": str(tmp_path / "home"),
        "STRATUM_METADATA_URL": pg_url,
        "STRATUM_QUEUE_URL": redis_url,
        "STRATUM_GATEWAY__RATE_LIMIT_URL": redis_url,
        "STRATUM_ARTIFACT_URL": f"s3://{bucket}/artifacts",
        "STRATUM_ARTIFACT_OPTIONS__KEY": "test",
        "STRATUM_ARTIFACT_OPTIONS__SECRET": "test",
        "STRATUM_ARTIFACT_OPTIONS__CLIENT_KWARGS__ENDPOINT_URL": s3_server,
        "STRATUM_CLUSTER__BACKEND": "local",
    }


def as_started_here(objs: list[Obj], name: str, services: dict[str, str]
                    ) -> tuple[list[str], dict[str, str], int, Obj]:
    """The pod's command line and environment, with this machine's services and a free
    port in place of the manifest's; returns them, the port, and the container."""
    c = container(find(objs, "Deployment", name))
    line = command_line(objs, c)
    assert line[:2] == ["tini", "--"]
    line = line[2:]
    if line[0] == "python":
        line[0] = sys.executable
    port = free_port()
    if "--port" in line:
        line[line.index("--port") + 1] = str(port)
    env = {k: v for k, v in pod_env(objs, c).items() if not k.startswith("STRATUM_CLUSTER")}
    env = {**env, **services}
    return line, env, port, c


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in [k for k in os.environ if k.startswith("STRATUM_")]:
        monkeypatch.delenv(key)
    yield


def probe(c: Obj, kind: str, port: int) -> httpx.Response:
    get = c[kind]["httpGet"]
    assert get["port"] == "http" and c["ports"][0]["name"] == "http"
    return httpx.get(f"http://127.0.0.1:{port}{get['path']}", timeout=c[kind]["timeoutSeconds"])


def stops_within(proc: subprocess.Popen[bytes], grace: float) -> float:
    t0 = time.monotonic()
    proc.terminate()
    proc.wait(grace)
    return time.monotonic() - t0


def test_control_plane_pod_serves_its_probes_and_healthcheck(
        objs: list[Obj], services: dict[str, str], clean_environ: None, tmp_path: Path) -> None:
    line, env, port, c = as_started_here(objs, "stratum-control", services)
    assert line[1:4] == ["-P", "-m", "stratum.control"]
    assert line[line.index("--host") + 1] == "127.0.0.1"  # $(POD_IP) expanded
    url = f"http://127.0.0.1:{port}"
    with started(line, ready_url=url + "/health", env=env, log=tmp_path / "control.log",
                 timeout=90) as proc:
        for kind in ("readinessProbe", "livenessProbe"):
            r = probe(c, kind, port)
            assert r.status_code == 200 and r.json()["ok"] is True, r.text
        # The image's HEALTHCHECK, as Docker would run it (its URL aimed at this port).
        health = next(x for x in dockerfile.parse_file(str(DEPLOY / "Dockerfile"))
                      if x.cmd == "HEALTHCHECK")
        check = [sys.executable if a == "python" else a for a in health.value[1:]]
        ok = subprocess.run(check, env={**os.environ, "STRATUM_HEALTH_URL": url + "/health"},
                            timeout=30, check=False)
        bad = subprocess.run(check, env={**os.environ, "STRATUM_HEALTH_URL": url + "/nope"},
                             capture_output=True, timeout=30, check=False)
        assert (ok.returncode, bad.returncode != 0) == (0, True)
        grace = find(objs, "Deployment", "stratum-control")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"]
        assert stops_within(proc, grace) < grace
        # uvicorn re-raises SIGTERM once its graceful shutdown is done
        assert proc.returncode in (0, -signal.SIGTERM)


def test_gateway_pod_serves_its_probes_and_drains_on_sigterm(
        objs: list[Obj], services: dict[str, str], clean_environ: None, tmp_path: Path) -> None:
    line, env, port, c = as_started_here(objs, "stratum-gateway", services)
    assert line[1:4] == ["-P", "-m", "stratum.gateway"]
    assert line[line.index("--name") + 1] == "mnist"  # $(GATEWAY_DEPLOYMENT) expanded
    with started(line, ready_url=f"http://127.0.0.1:{port}/v2/health/live", env=env,
                 log=tmp_path / "gateway.log", timeout=60) as proc:
        assert probe(c, "livenessProbe", port).status_code == 200
        # No deployment `mnist` has replicas here: not ready, so a Service would send it
        # nothing; the probe answers (503), it does not hang or fail to connect.
        r = probe(c, "readinessProbe", port)
        assert (r.status_code, r.json()) == (503, {"ready": False})
        grace = find(objs, "Deployment", "stratum-gateway")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"]
        assert stops_within(proc, grace) < grace
        assert proc.returncode == 0
