"""Reliability of serving, with every part a real process: the CLI starts the control
plane, which starts replicas and a gateway; clients talk HTTP to the gateway.

One deployment lives through the whole module (starting replicas is the slow part on a
small machine), so the tests run in order: a crash under load, a rolling update under
load, a canary, scale and rollback, a failed update, a busy port, auth, undeploy. The
security bars of issue 12 run on the same deployment: every admin route of the control
plane, the gateway and a replica refuses a request without a credential; replicas answer
only with their generation's secret and listen on loopback; the home is private.
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
from stratum.security.keys import key_id_of, verify_key
from stratum.store import Store
from tests.integration.gateway_fixtures import (
    SAMPLE,
    BackgroundLoad,
    admin_headers,
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
        self.admin: dict[str, str] = {}  # the home's admin token, once the CLI made it
        self.first_secrets: set[str] = set()  # of the first generation's replicas

    def cli(self, *args: str) -> Any:
        result = self.runner.invoke(app, ["--home", str(self.home), *args], env=TUNING)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            return result.exception
        assert result.exit_code == 0, result.output
        return orjson.loads(result.stdout) if "--json" in args else result.stdout

    def deployment(self, name: str = "tiny") -> dict[str, Any]:
        rec = read_record(self.settings)
        assert rec is not None, "the control plane is not running"
        r = httpx.get(f"{rec['url']}/deployments/{name}", headers=self.admin, timeout=10)
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
    assert register_tiny(store, "twin", seed=4) == 1  # a second model, for a shared port
    assert register_tiny(store, "twin", seed=5) == 2
    store.close()
    c = Cluster(home, settings, free_port())
    try:
        out = c.cli("deploy", "tiny@1", "--replicas", "2", "--port", str(c.port), "--json")
        assert not isinstance(out, Exception), out
        c.admin = admin_headers(settings)
        c.first_secrets = {replica_secret_of(r["pid"]) for r in out["replicas"]}
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


def replica_secret_of(pid: int) -> str:
    """The secret a replica was started with, from its environment (readable by its user)."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in env
                if v.startswith(b"STRATUM_REPLICA_SECRET="))


def _listens_on(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port:
                out.add(addr)
    return out


CONTROL_ADMIN = [("GET", "/deployments", None), ("GET", "/deployments/tiny", None),
                 ("POST", "/deployments", {"model": "tiny@2"}),
                 ("POST", "/deployments/tiny/rollback", None),
                 ("POST", "/deployments/tiny/scale", {"replicas": 1}), ("GET", "/events", None),
                 ("DELETE", "/deployments/tiny", None)]
GATEWAY_ADMIN = [("GET", "/admin/routes", None), ("GET", "/admin/info", None),
                 ("PUT", "/admin/routes", {"deployments": {}})]
# /metrics is open, as on the gateway: Prometheus cannot know a per-generation secret.
REPLICA_ROUTES = [("GET", "/v2", None), ("GET", "/v2/models/tiny", None),
                  ("GET", "/admin/info", None),
                  ("POST", "/admin/swap", {"ref": "2"}),
                  ("POST", "/v1/models/tiny:predict", SAMPLE),
                  ("POST", "/v1/models/tiny/feedback", {"request_id": "x", "label": 1}),
                  ("POST", "/admin/drain", None)]  # last: let through, it would drain


def _statuses(base: str, routes: list[tuple[str, str, Any]],
              headers: dict[str, str]) -> dict[str, int]:
    with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
        return {f"{m} {p}": c.request(m, p, json=body).status_code for m, p, body in routes}


def test_every_admin_route_needs_a_credential(cluster: Cluster) -> None:
    rec = read_record(cluster.settings)
    assert rec is not None
    carol = cluster.cli("keys", "create", "carol", "--scope", "predict", "--json")
    predict_only = {"authorization": f"Bearer {carol['key']}"}
    for who, headers, want in (("nobody", {}, 401), ("a wrong token",
                               {"authorization": "Bearer sk_00_nope"}, 401),
                               ("a predict-only key", predict_only, 403)):
        for base, routes in ((rec["url"], CONTROL_ADMIN), (cluster.url, GATEWAY_ADMIN)):
            got = _statuses(base, routes, headers)
            assert set(got.values()) == {want}, (who, base, got)
    got = _statuses(cluster.url, GATEWAY_ADMIN, {"x-stratum-admin-token": "not-the-supervisors"})
    assert set(got.values()) == {401}, got
    assert httpx.get(f"{rec['url']}/health").status_code == 200
    assert httpx.get(f"{cluster.url}/v2/health/ready").status_code == 200
    # The home's admin token opens both; what they show never holds a replica's secret.
    replicas = cluster.deployment()["observed"]["replicas"]
    secrets = [replica_secret_of(r["pid"]) for r in replicas]
    routes = httpx.get(f"{cluster.url}/admin/routes", headers=cluster.admin)
    assert routes.status_code == 200 and "***" in routes.text
    assert not any(s in routes.text for s in secrets)
    events = httpx.get(f"{rec['url']}/events", headers=cluster.admin, params={"limit": 500})
    assert events.status_code == 200 and not any(s in events.text for s in secrets)
    assert cluster.predict().status_code == 200


def test_a_replica_answers_only_with_its_secret_and_only_on_loopback(cluster: Cluster) -> None:
    for r in cluster.deployment()["observed"]["replicas"]:
        assert _listens_on(r["port"]) == {"0100007F"}, r  # 127.0.0.1, nothing else
        for headers in ({}, {"x-stratum-replica-secret": "x" * 43}):
            got = _statuses(r["url"], REPLICA_ROUTES, headers)
            assert set(got.values()) == {401}, (r["url"], got)
        assert httpx.get(f"{r['url']}/v2/health/ready").status_code == 200
        metrics = httpx.get(f"{r['url']}/metrics")
        assert metrics.status_code == 200 and "stratum_replica_requests_total" in metrics.text
        assert replica_secret_of(r["pid"]) not in metrics.text
        auth = {"x-stratum-replica-secret": replica_secret_of(r["pid"])}
        assert httpx.post(f"{r['url']}/v1/models/tiny:predict", json=SAMPLE,
                          headers=auth).status_code == 200
        assert httpx.get(f"{r['url']}/admin/info", headers=auth).json()["ready"] is True


def test_the_home_is_private_and_holds_the_admin_token_hashed(cluster: Cluster) -> None:
    home = cluster.home
    token = (home / "admin.token").read_text().strip()
    assert cluster.admin == {"authorization": f"Bearer {token}"}
    loose = [(str(p.relative_to(home)), oct(p.stat().st_mode & 0o777))
             for p in [home, *home.rglob("*")] if p.stat().st_mode & 0o077]
    assert not loose, loose  # the folders 0700, every file 0600
    for name in ("stratum.db", "admin.token", "control.json", "logs/control.log"):
        assert (home / name).stat().st_mode & 0o777 == 0o600, name
    store = Store.open(cluster.settings)
    try:
        row = store.meta.api_key(key_id_of(token) or "")
    finally:
        store.close()
    assert row is not None and row.name == "admin-token" and row.scopes == ["admin"]
    assert verify_key(token, row.key_hash) and token not in row.key_hash
    stored = b"".join(p.read_bytes() for p in home.glob("stratum.db*") if p.is_file())
    assert token.encode() not in stored


def test_every_process_says_loudly_that_auth_is_off(cluster: Cluster) -> None:
    logs = cluster.home / "logs"
    replica_logs = sorted((logs / "tiny").glob("tiny-v1-*.log"))
    assert replica_logs
    for log in (logs / "control.log", logs / "tiny" / "gateway-0.log", *replica_logs):
        text = log.read_text()
        assert "WARNING" in text and "auth is OFF" in text, (log, text[-500:])
    assert f"reach port {cluster.port} " in (logs / "tiny" / "gateway-0.log").read_text()


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


def test_a_new_generation_gets_a_new_replica_secret(cluster: Cluster) -> None:
    now = {replica_secret_of(r["pid"]) for r in cluster.deployment()["observed"]["replicas"]}
    assert len(cluster.first_secrets) == 1 and len(now) == 1
    assert not now & cluster.first_secrets


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


def test_a_first_deploy_that_never_starts_is_said_to_fail_once_per_generation(
        cluster: Cluster) -> None:
    # Written to the store, not through the API: the audit test below counts deploys.
    spec = {**cluster.deployment()["spec"], "ref": "3", "version": 3, "replicas": 1,
            "port": free_port(), "canary": None, "shadow": None, "previous": None,
            "follow": None, "autoscale": None}
    store = Store.open(cluster.settings)

    def failed(generation: int) -> list[Any]:
        dep: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            dep = cluster.deployment("broken")
            err = dep["observed"].get("last_error") or {}
            if dep["observed"].get("status") == "failed" and err.get("generation") == generation:
                time.sleep(2.0)  # about 6 more ticks, each of which used to say it again
                return [e for e in store.meta.events(subject="broken", limit=1000)
                        if e.kind == "deployment.update_failed"]
            time.sleep(0.3)
        raise AssertionError(f"generation {generation} never failed: {dep['observed']}")

    gateways: list[int] = []
    try:
        first = store.meta.put_deployment("broken", spec).generation
        (once,) = failed(first)
        assert "v3" in once.payload["message"] and "failed to start" in once.payload["message"]
        gateways = [g["pid"] for g in cluster.deployment("broken")["observed"]["gateways"]]
        # A scale wants the same version: nothing is tried again, but the new generation
        # hears the failure (what `stratum scale` waits for), once, with the same error.
        second = store.meta.put_deployment("broken", {**spec, "replicas": 2}).generation
        later, again = failed(second)  # newest first
        assert later.payload["generation"] == second and again.payload["generation"] == first
        assert later.payload["message"] == again.payload["message"]
    finally:
        store.meta.delete_deployment("broken")
        store.close()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in gateways) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in gateways)
    assert cluster.predict().status_code == 200


def test_a_busy_port_is_a_clear_error(cluster: Cluster) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        err = cluster.cli("deploy", "tiny@2", "--name", "other", "--port", str(busy), "--json")
    assert isinstance(err, ConflictError) and "busy" in err.message, err
    # A port can be shared, but not a name: "tiny" already answers there.
    err = cluster.cli("deploy", "tiny@2", "--name", "other", "--port", str(cluster.port))
    assert isinstance(err, ConflictError) and "already answers to tiny" in err.message, err
    err = cluster.cli("deploy", "twin@1", "--policy", "fastest", "--port", str(cluster.port))
    assert "unknown policy 'fastest'" in str(err), err
    assert cluster.predict().status_code == 200


def test_auth_scopes_and_rate_limit(cluster: Cluster, tmp_path: Path) -> None:
    alice = cluster.cli("keys", "create", "alice", "--scope", "predict", "--json")
    bob = cluster.cli("keys", "create", "bob", "--scope", "feedback", "--json")
    (rep,) = cluster.deployment()["observed"]["replicas"]
    settings = cluster.settings.model_copy(update={"gateway": cluster.settings.gateway.model_copy(
        update={"require_auth": True, "rate_limit_per_s": 2.0, "rate_limit_burst": 5.0})})
    with gateway(settings, [rep["url"]], tmp_path / "gw.log",
                 secret=replica_secret_of(rep["pid"])) as (url, _):
        path = f"{url}/v1/models/tiny:predict"
        assert httpx.post(path, json=SAMPLE).status_code == 401
        assert httpx.post(path, json=SAMPLE, headers={"x-api-key": "sk_00_bad"}).status_code \
            == 401
        r = httpx.post(path, json=SAMPLE, headers={"authorization": f"Bearer {bob['key']}"})
        assert r.status_code == 403 and "predict" in r.json()["message"]
        auth = {"authorization": f"Bearer {alice['key']}"}
        r = httpx.post(f"{url}/v1/models/tiny/feedback", json={"request_id": "x", "label": 1},
                       headers=auth)
        assert r.status_code == 403 and "feedback" in r.json()["message"]
        codes = [httpx.post(path, json=SAMPLE, headers=auth).status_code for _ in range(8)]
        assert codes[:5] == [200] * 5 and 429 in codes[5:], codes
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200  # probes stay open
        assert httpx.get(f"{url}/admin/routes", headers=auth).status_code == 403
        cluster.cli("keys", "revoke", alice["key_id"])


def test_two_deployments_share_one_gateway_port(cluster: Cluster) -> None:
    """Issue 13, bar 4: ``twin`` joins ``tiny`` on its port; each answers by its own name
    with its own traffic split, then its own key requirement and rate limit; undeployed,
    it leaves ``tiny`` serving."""
    port = str(cluster.port)
    out = cluster.cli("deploy", "twin@2", "--canary", "twin@1:50", "--port", port, "--json")
    assert not isinstance(out, Exception), out
    assert out["status"] == "ready" and out["url"] == cluster.url, out

    async def both() -> tuple[Any, Any]:
        return await asyncio.gather(load_loop(cluster.url, "tiny", 3.0, concurrency=4),
                                    load_loop(cluster.url, "twin", 3.0, concurrency=4))
    tiny, twin = asyncio.run(both())
    assert tiny.failed == [] and twin.failed == [], (tiny, twin)
    assert set(tiny.versions) == {"1"} and tiny.ok >= 50, tiny  # tiny's split is its own
    assert set(twin.versions) == {"1", "2"}, twin
    assert 0.3 <= twin.versions["1"] / twin.ok <= 0.7, twin.versions
    # Every gateway on the port holds both tables, whichever deployment started it.
    gateways = [g for name in ("tiny", "twin")
                for g in cluster.deployment(name)["observed"]["gateways"]]
    assert len(gateways) == 2
    for g in gateways:
        shown = httpx.get(f"http://127.0.0.1:{g['admin_port']}/admin/routes",
                          headers=cluster.admin, timeout=5).json()
        assert set(shown["parts"]) == {"tiny", "twin"}, shown

    # Its own admission: twin now needs a key and allows a burst of 3, tiny neither.
    carol = cluster.cli("keys", "create", "carol", "--scope", "predict", "--json")
    key = {"authorization": f"Bearer {carol['key']}"}
    out = cluster.cli("deploy", "twin@2", "--auth", "--rate-limit", "0.2", "--rate-burst", "3",
                      "--json")
    assert not isinstance(out, Exception), out
    twin_url = f"{cluster.url}/v1/models/twin:predict"
    assert httpx.post(twin_url, json=SAMPLE, timeout=10).status_code == 401
    codes = [httpx.post(twin_url, json=SAMPLE, headers=key, timeout=10).status_code
             for _ in range(10)]
    # The port's two gateways share the buckets: 3 pass in all (a 4th if the ten took
    # over 5 s), not 3 on each.
    assert set(codes) == {200, 429} and 3 <= codes.count(200) <= 4, codes
    assert all(cluster.predict().status_code == 200 for _ in range(10))  # no key, no limit
    cluster.cli("keys", "revoke", carol["key_id"])

    obs = cluster.deployment("twin")["observed"]
    pids = [r["pid"] for r in obs["replicas"]] + [g["pid"] for g in obs["gateways"]]
    assert "undeployed" in cluster.cli("undeploy", "twin")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
            any(_alive(p) for p in pids) or httpx.post(twin_url, json=SAMPLE,
                                                       headers=key).status_code != 404):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)
    r = httpx.post(twin_url, json=SAMPLE, timeout=10)
    assert r.status_code == 404 and "not deployed" in r.json()["message"], r.text
    assert cluster.predict().status_code == 200


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


def test_every_admin_action_of_the_module_is_audited(cluster: Cluster) -> None:
    """Last: what the tests above did, as ``stratum audit`` tells it — who (key id and
    name, supervisor, anonymous; never a token), from 127.0.0.1, what and what changed."""
    result = cluster.runner.invoke(app, ["--home", str(cluster.home), "audit", "--json",
                                         "--limit", "1000"])
    assert result.exit_code == 0, result.output
    rows = [orjson.loads(line) for line in result.stdout.splitlines()][::-1]  # oldest first
    token = (cluster.home / "admin.token").read_text().strip()
    admin = f"key:{key_id_of(token)} admin-token"

    def of(component: str, action: str, outcome: int = 200) -> list[dict[str, Any]]:
        return [r for r in rows if (r["component"], r["action"], r["outcome"])
                == (component, action, outcome)]

    deploys = [r for r in of("control", "deploy") if r["target"] != "twin"]
    assert [r["target"] for r in of("control", "deploy") if r["target"] == "twin"] == \
        ["twin"] * 2  # test_two_deployments_share_one_gateway_port
    assert {r["actor"] for r in deploys} == {admin}
    assert all(r["source"].startswith("127.0.0.1:") and r["target"] == "tiny" for r in deploys)
    assert deploys[0]["detail"]["before"] is None
    assert (deploys[0]["detail"]["after"]["version"], deploys[0]["detail"]["after"]["replicas"]
            ) == (1, 2)
    assert {"before": 1, "after": 2} in [{k: r["detail"][k].get("version") for k in
                                          ("before", "after")} for r in deploys[1:]]
    (scaled,) = of("control", "scale")
    assert scaled["actor"] == admin
    assert scaled["detail"] == {"before": {"replicas": 2}, "after": {"replicas": 1}}
    (rolled,) = of("control", "rollback")
    assert (rolled["detail"]["before"]["version"], rolled["detail"]["after"]["version"]) == (2, 1)
    twin_gone, gone = of("control", "undeploy")
    assert twin_gone["target"] == "twin"
    assert gone["detail"]["before"]["model"] == "tiny" and gone["detail"]["after"] is None
    assert [r["target"] for r in of("control", "deploy", 409)] == ["other", "other"]
    # Refused: nobody, a wrong key, a predict-only key (test_every_admin_route_...).
    for action in ("deploy", "scale", "rollback", "undeploy"):
        assert {r["actor"] for r in of("control", action, 401)} == {"anonymous",
                                                                    "key:00 (invalid)"}
        (carol,) = of("control", action, 403)
        assert carol["actor"].startswith("key:") and carol["actor"].endswith(" carol")
        assert carol["source"].startswith("127.0.0.1:")
    # The supervised gateway records what the supervisor pushed, and who it refused.
    pushed = of("gateway", "routes.put")
    assert pushed and {(r["actor"], r["target"]) for r in pushed} == {
        ("supervisor", "tiny"), ("supervisor", "twin")}  # each deployment's part by name
    assert all(r["detail"]["replicas"] >= 1 for r in pushed)
    assert {r["actor"] for r in of("gateway", "routes.put", 401)} >= {
        "anonymous", "anonymous (wrong supervisor token)", "key:00 (invalid)"}
    # Replicas record the drains of a rolling update, and the calls without the secret.
    drains = of("replica", "drain")
    assert drains and {r["actor"] for r in drains} == {"supervisor"}
    assert all(r["detail"]["drained"] for r in drains)
    for action in ("swap", "drain"):
        assert {r["actor"] for r in of("replica", action, 401)} == {"anonymous"}
    assert [r["action"] for r in rows if r["component"] == "cli"][:2] == ["keys.create"] * 2
    everything = result.stdout
    assert token not in everything
    assert not any(s in everything for s in cluster.first_secrets)
    # Filters, as the CLI takes them.
    only = cluster.runner.invoke(app, ["--home", str(cluster.home), "audit", "--json",
                                       "--component", "control", "--actor", admin])
    assert {orjson.loads(x)["action"] for x in only.stdout.splitlines()} == {
        "deploy", "scale", "rollback", "undeploy"}


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
