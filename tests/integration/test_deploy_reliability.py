"""Reliability of serving, with every part a real process: the CLI starts the control
plane, which starts replicas and a gateway; clients talk HTTP to the gateway.

One deployment lives through the whole module (starting replicas is the slow part on a
small machine), so the tests run in order: a crash under load, a rolling update under
load, a canary, scale and rollback, a failed update, a busy port, auth, undeploy.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from stratum.cli.main import app
from stratum.config import Settings, load_settings
from stratum.control.discovery import read_record
from stratum.errors import ConflictError, ServingError
from stratum.store import Store
from tests.integration.gateway_fixtures import (
    SAMPLE,
    BackgroundLoad,
    gateway,
    load_loop,
    register_tiny,
    stop_control_plane,
)
from tests.services import free_port

pytestmark = pytest.mark.integration

TUNING = {
    "STRATUM_CONTROL__RECONCILE_INTERVAL_S": "0.3",
    "STRATUM_CONTROL__RESTART_BACKOFF_S": "0.2",
    "STRATUM_CONTROL__START_ATTEMPTS": "1",
    "STRATUM_GATEWAY__HEALTH_INTERVAL_S": "0.5",
    "STRATUM_LOG_LEVEL": "WARNING",
}


class Cluster:
    def __init__(self, home: Path, settings: Settings, port: int) -> None:
        self.home, self.settings, self.port = home, settings, port
        self.url = f"http://127.0.0.1:{port}"
        self.runner = CliRunner()

    def cli(self, *args: str) -> Any:
        result = self.runner.invoke(app, ["--home", str(self.home), *args], env=TUNING)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            return result.exception
        assert result.exit_code == 0, result.output
        return orjson.loads(result.stdout) if "--json" in args else result.stdout

    def deployment(self, name: str = "tiny") -> dict[str, Any]:
        rec = read_record(self.settings)
        assert rec is not None, "the control plane is not running"
        r = httpx.get(f"{rec['url']}/deployments/{name}", timeout=10)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def predict(self) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/models/tiny:predict", json=SAMPLE, timeout=10)

    def wait_for(self, what: str, check: Any, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        dep: dict[str, Any] = {}
        while time.monotonic() < deadline:
            dep = self.deployment()
            if check(dep["observed"]):
                return dep
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}: {dep.get('observed')}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("deploy") / "home"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in TUNING.items():
            mp.setenv(k, v)
        settings = load_settings(home=home)
    store = Store.open(settings)
    assert register_tiny(store, seed=1) == 1
    assert register_tiny(store, seed=2) == 2
    assert register_tiny(store, seed=3, broken=True) == 3
    store.close()
    c = Cluster(home, settings, free_port())
    try:
        out = c.cli("deploy", "tiny@1", "--replicas", "2", "--port", str(c.port), "--json")
        assert not isinstance(out, Exception), out
        yield c
    finally:
        stop_control_plane(settings)


def test_deploy_serves_and_status_shows_replicas(cluster: Cluster) -> None:
    r = httpx.post(f"{cluster.url}/v1/models/tiny:predict", json=SAMPLE,
                   headers={"x-request-id": "abc-123"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == "1"
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["predictions"][0]["class"] in (0, 1, 2)
    generated = cluster.predict().headers["x-request-id"]
    assert len(generated) >= 16
    status = cluster.cli("status", "--json")
    (dep,) = status["deployments"]
    assert dep["status"] == "ready"
    reps = dep["observed"]["replicas"]
    assert len(reps) == 2 and all(r["healthy"] and r["version"] == 1 for r in reps)
    assert dep["observed"]["traffic"] == [{"version": 1, "weight": 100.0, "replicas": 2}]


def test_malformed_requests_are_4xx_through_the_gateway(cluster: Cluster) -> None:
    u = cluster.url
    cases: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("POST", "/v1/models/tiny:predict", b"{not json", {"content-type": "application/json"}),
        ("POST", "/v1/models/tiny:predict", b'{"instances": [[1, 2]]}', {}),
        ("POST", "/v1/models/tiny:predict", b'{"instances": [["a", "b", "c", "d"]]}', {}),
        ("POST", "/v1/models/tiny:predict", b'{"rows": [[1, 2, 3, 4]]}', {}),
        ("POST", "/v1/models/tiny:predict", b"[1, 2, 3]", {}),
        ("POST", "/v1/models/tiny:predict", b'{"instances": [[1,2,3,4]]}',
         {"content-type": "text/plain"}),
        ("POST", "/v1/models/nope:predict", b'{"instances": [[1,2,3,4]]}', {}),
        ("POST", "/v2/models/tiny/infer", b'{"inputs": [{"name": "x"}]}', {}),
        ("POST", "/v2/models/tiny/infer", orjson.dumps({"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [1, 2, 3, 4, 5]}]}), {}),
        ("POST", "/v2/models/tiny/infer", orjson.dumps({"inputs": [
            {"name": "x", "datatype": "BYTES", "shape": [1, 4], "data": ["a"] * 4}]}), {}),
        ("POST", "/v1/models/tiny:predict", b"x" * (5 * 1024 * 1024), {}),
        ("GET", "/v1/models/tiny:predict", b"", {}),
        ("GET", "/nowhere", b"", {}),
    ]
    bad = []
    with httpx.Client(base_url=u, timeout=10) as client:
        for method, path, body, headers in cases:
            r = client.request(method, path, content=body,
                               headers={"content-type": "application/json", **headers})
            if not 400 <= r.status_code < 500 or "message" not in r.text:
                bad.append((method, path, body[:40], r.status_code, r.text[:200]))
    assert not bad, bad


def test_sigkill_a_replica_under_load(cluster: Cluster) -> None:
    before = cluster.deployment()["observed"]["replicas"]
    victim = before[0]["pid"]
    load = BackgroundLoad(cluster.url, "tiny", concurrency=20)
    time.sleep(2.0)
    os.kill(victim, signal.SIGKILL)
    time.sleep(5.0)
    res = load.stop()
    assert res.failed == [], res.failed[:5]
    assert res.ok > 100, res
    cluster.wait_for("the supervisor to bring the replica back", lambda o: o["status"] == "ready"
                     and len(o["replicas"]) == 2
                     and victim not in [r["pid"] for r in o["replicas"]])
    kinds = [e["kind"] for e in cluster.cli("models", "history", "tiny", "--json")]
    assert "replica.crashed" in kinds


def test_rolling_update_under_load(cluster: Cluster) -> None:
    load = BackgroundLoad(cluster.url, "tiny", concurrency=20)
    time.sleep(1.0)
    out = cluster.cli("deploy", "tiny@2", "--json")
    time.sleep(1.0)
    res = load.stop()
    assert not isinstance(out, Exception), out
    assert res.failed == [], res.failed[:5]
    assert set(res.versions) <= {"1", "2"} and res.versions["2"] > 0, res.versions
    assert {r["version"] for r in out["replicas"]} == {2}
    assert all(cluster.predict().headers["x-model-version"] == "2" for _ in range(10))


def test_canary_split_matches_weight(cluster: Cluster) -> None:
    out = cluster.cli("deploy", "tiny@2", "--canary", "tiny@1:30", "--json")
    assert not isinstance(out, Exception), out
    assert sorted((t["version"], t["weight"]) for t in out["traffic"]) == [(1, 30.0), (2, 70.0)]
    res = asyncio.run(load_loop(cluster.url, "tiny", 4.0, concurrency=8))
    assert res.failed == [] and res.ok >= 200, res
    share = res.versions["1"] / res.ok
    assert 0.2 <= share <= 0.4, res.versions


def test_scale_then_rollback(cluster: Cluster) -> None:
    out = cluster.cli("scale", "tiny", "1", "--json")
    assert not isinstance(out, Exception), out
    assert sorted(r["version"] for r in out["replicas"]) == [1, 2]  # primary + canary
    out = cluster.cli("rollback", "tiny", "--json")
    assert not isinstance(out, Exception), out
    assert [r["version"] for r in out["replicas"]] == [1]
    assert cluster.predict().headers["x-model-version"] == "1"


def test_a_version_that_fails_to_load_leaves_the_current_one_serving(cluster: Cluster) -> None:
    load = BackgroundLoad(cluster.url, "tiny", concurrency=4)
    err = cluster.cli("deploy", "tiny@3", "--json")
    res = load.stop()
    assert isinstance(err, ServingError), err
    assert "v3" in err.message and "failed to start" in err.message
    assert res.failed == [] and set(res.versions) == {"1"}, res
    dep = cluster.deployment()
    assert dep["spec"]["version"] == 1
    assert cluster.predict().headers["x-model-version"] == "1"


def test_a_broken_deployment_does_not_stop_the_others_being_reconciled(
        cluster: Cluster) -> None:
    store = Store.open(cluster.settings)
    try:
        # A row the supervisor cannot turn into a spec; it is read on every tick.
        store.meta.put_deployment("garbled", {"model": "tiny"})
        victim = cluster.deployment()["observed"]["replicas"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        cluster.wait_for("the supervisor to replace the replica despite the broken row",
                         lambda o: o["status"] == "ready" and len(o["replicas"]) == 1
                         and victim not in [r["pid"] for r in o["replicas"]])
        failed = [e for e in store.meta.events(kind="deployment.reconcile_failed")
                  if e.subject == "garbled"]
        assert len(failed) == 1, failed  # recorded once while it persists, not every tick
        assert cluster.predict().status_code == 200
    finally:
        store.meta.delete_deployment("garbled")
        store.close()


def test_a_busy_port_is_a_clear_error(cluster: Cluster) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        err = cluster.cli("deploy", "tiny@2", "--name", "other", "--port", str(busy), "--json")
    assert isinstance(err, ConflictError) and "busy" in err.message, err
    err = cluster.cli("deploy", "tiny@2", "--name", "other", "--port", str(cluster.port))
    assert isinstance(err, ConflictError), err
    assert cluster.predict().status_code == 200


def test_auth_scopes_and_rate_limit(cluster: Cluster, tmp_path: Path) -> None:
    alice = cluster.cli("keys", "create", "alice", "--scope", "predict", "--json")
    bob = cluster.cli("keys", "create", "bob", "--scope", "feedback", "--json")
    replicas = [r["url"] for r in cluster.deployment()["observed"]["replicas"]]
    settings = cluster.settings.model_copy(update={"gateway": cluster.settings.gateway.model_copy(
        update={"require_auth": True, "rate_limit_per_s": 2.0, "rate_limit_burst": 5.0})})
    with gateway(settings, replicas, tmp_path / "gw.log") as (url, _):
        path = f"{url}/v1/models/tiny:predict"
        assert httpx.post(path, json=SAMPLE).status_code == 401
        assert httpx.post(path, json=SAMPLE, headers={"x-api-key": "sk_00_bad"}).status_code \
            == 401
        r = httpx.post(path, json=SAMPLE, headers={"authorization": f"Bearer {bob['key']}"})
        assert r.status_code == 403 and "predict" in r.json()["message"]
        auth = {"authorization": f"Bearer {alice['key']}"}
        codes = [httpx.post(path, json=SAMPLE, headers=auth).status_code for _ in range(8)]
        assert codes[:5] == [200] * 5 and 429 in codes[5:], codes
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200  # probes stay open
        assert httpx.get(f"{url}/admin/routes", headers=auth).status_code == 403
        cluster.cli("keys", "revoke", alice["key_id"])


def test_undeploy_stops_every_process(cluster: Cluster) -> None:
    obs = cluster.deployment()["observed"]
    pids = [r["pid"] for r in obs["replicas"]] + [obs["gateway"]["pid"]]
    out = cluster.cli("undeploy", "tiny")
    assert "undeployed" in out
    deadline = time.monotonic() + 30
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        time.sleep(0.2)
    assert not alive
    with pytest.raises(httpx.ConnectError):
        cluster.predict()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False
