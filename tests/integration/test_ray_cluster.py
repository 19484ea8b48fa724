"""Serving on Ray (issue 14, bars 3 and 4) on one local 3-node Ray cluster shared by the
module, with metadata in a fresh PostgreSQL database, artifacts in a moto S3 server and
the feedback queue in Redis; every process is real (the cluster's nodes, the control plane
the CLI starts, gateways, replicas hosted by Ray actors on the nodes).

3. ``deploy --backend ray --replicas 4``: the replicas land on all three nodes, each bound
   to its node's address; under steady load through the gateway one worker node is killed
   hard (SIGKILL of its ``ray start``, raylet, agents, workers and the replicas they host):
   no client request fails, and the deployment is back to 4 ready replicas on the two
   surviving nodes within 30 s.
4. Bad input, each one clear error with nothing recorded and the deployment above still
   serving: a replica asking for more CPUs than any node has; a home whose metadata and
   artifacts are files of this machine; a cluster address where nothing answers.

And what works unchanged with the replicas on Ray, each under client load with no failed
request: a canary and a rollback; a shadow (every request mirrored to its replica, every
client answered by the primary); a deployment following an alias, hot-swapped in place
(same replica processes) within a reconcile tick of the alias moving; a deployment's own
key requirement and rate limit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from stratum.cli.main import app
from stratum.cluster import local
from stratum.cluster.procfs import alive, processes_mentioning
from stratum.config import Settings, load_settings
from stratum.errors import StratumError
from stratum.store import Store
from tests.integration.gateway_fixtures import (
    SAMPLE,
    BackgroundLoad,
    load_loop,
    register_tiny,
    stop_control_plane,
)
from tests.services import REDIS_URL, drop_pg_database, free_port, fresh_pg_database

pytestmark = pytest.mark.integration

REPLICAS = 4
TUNING = {"control": {"reconcile_interval_s": 0.3, "restart_backoff_s": 0.2},
          "gateway": {"health_interval_s": 0.5, "routes_poll_s": 0.3}, "log_level": "WARNING"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.LocalCluster]:
    home = tmp_path_factory.mktemp("ray-serve-cluster")
    started = local.start(home, nodes=3, cpus_per_node=2)
    try:
        yield started
    finally:
        pids = local.stop(home)
        assert pids and not [p for p in pids if alive(p)]
        assert not processes_mentioning(started.temp_dir)  # nothing of it is left


def _home(root: Path, cluster_address: str, **settings: Any) -> Settings:
    """A home with ``settings`` in its YAML file (what the CLI reads) and tiny@1 in it."""
    root.mkdir(parents=True, exist_ok=True)
    doc = {**TUNING, "home": str(root / "home"), "cluster": {"address": cluster_address},
           **settings}
    (root / "stratum.yaml").write_text(yaml.safe_dump(doc))
    s = load_settings(root / "stratum.yaml")
    store = Store.open(s)
    try:
        assert register_tiny(store, seed=3) == 1
    finally:
        store.close()
    return s


def _cli(settings: Settings, *args: str, ok: bool = True) -> Any:
    """The CLI in this process; a refusal comes back as the one error it raised (which
    ``stratum`` prints as one line)."""
    config = settings.home.parent / "stratum.yaml"
    result = CliRunner().invoke(app, ["--config", str(config), *args])
    if not ok:
        assert isinstance(result.exception, StratumError), (result.output, result.exception)
        return str(result.exception)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return json.loads(result.stdout) if "--json" in args else result.output


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, s3_server: str,
           cluster: local.LocalCluster) -> Iterator[Settings]:
    """The home every node can reach: PostgreSQL, S3 (moto) and Redis."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        pytest.fail(f"Redis at {REDIS_URL} is needed: {exc}")
    url, db = fresh_pg_database()
    bucket = f"stratum-{uuid.uuid4().hex[:8]}"
    httpx.put(f"{s3_server}/{bucket}").raise_for_status()
    s = _home(tmp_path_factory.mktemp("ray-serve"), cluster.address, metadata_url=url,
              queue_url=REDIS_URL, artifact_url=f"s3://{bucket}/artifacts",
              artifact_options={"key": "test", "secret": "test", "client_kwargs": {
                  "endpoint_url": s3_server, "region_name": "us-east-1"}})
    try:
        yield s
    finally:
        stop_control_plane(s)
        drop_pg_database(db)


@pytest.fixture(scope="module")
def deployed(shared: Settings) -> dict[str, Any]:
    port = free_port()
    out = _cli(shared, "deploy", "tiny@1", "--replicas", str(REPLICAS), "--backend", "ray",
               "--cpus", "1", "--port", str(port), "--json", "--timeout", "120")
    return {"port": port, "url": f"http://127.0.0.1:{port}", **out}


def _observed(s: Settings, name: str = "tiny") -> dict[str, Any]:
    store = Store.open(s)
    try:
        dep = store.meta.deployment(name)
        return {"generation": dep.generation, **(dep.observed or {})}
    finally:
        store.close()


def _deployments(s: Settings) -> list[str]:
    store = Store.open(s)
    try:
        return [d.name for d in store.meta.deployments()]
    finally:
        store.close()


def _serves(url: str) -> bool:
    return httpx.post(f"{url}/v1/models/tiny:predict", json=SAMPLE, timeout=10).status_code \
        == 200


def test_replicas_spread_and_survive_a_worker_node_killed_hard(
        shared: Settings, cluster: local.LocalCluster, deployed: dict[str, Any]) -> None:
    hosts = [r["host"] for r in deployed["replicas"]]
    nodes = {n.ip for n in cluster.nodes}
    assert len(hosts) == REPLICAS and set(hosts) == nodes, hosts  # spread over all three
    assert all(r["url"].startswith(f"http://{r['host']}:") for r in deployed["replicas"])
    status = json.loads(subprocess.run(  # another process: it joins the cluster's GCS
        [str(Path(sys.executable).with_name("stratum")), "--config",
         str(shared.home.parent / "stratum.yaml"), "cluster", "status", "--json"],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    runs = {n["ip"]: n["runs"] for n in status["nodes"]}
    assert sum(len(r) for r in runs.values()) == REPLICAS, status

    workers = [n.ip for n in cluster.nodes if not n.head]
    victim = max(workers, key=hosts.count)
    lost = hosts.count(victim)
    load = BackgroundLoad(deployed["url"], "tiny", concurrency=8)
    try:
        time.sleep(2.0)
        t0 = time.monotonic()
        killed = cluster.kill_node(victim)
        assert killed and not [p for p in killed if alive(p)]
        recovered = None
        while time.monotonic() - t0 < 60:
            obs = _observed(shared)
            reps = obs.get("replicas") or []
            if len(reps) == REPLICAS and all(r["state"] == "ready" and r["host"] != victim
                                             for r in reps):
                recovered = time.monotonic() - t0
                break
            time.sleep(0.2)
        time.sleep(1.0)  # and it goes on serving on the new replicas
    finally:
        result = load.stop()
    print(f"\nnode {victim} killed with {lost} of {REPLICAS} replicas: back to {REPLICAS} "
          f"ready in {recovered} s; {result.ok} requests, {len(result.failed)} failed")
    assert recovered is not None and recovered < 30, _observed(shared)
    assert result.failed == [] and result.ok > 100, result.failed[:5]
    after = {r["host"] for r in _observed(shared)["replicas"]}
    assert after == nodes - {victim}


def _replica_pids(cluster: local.LocalCluster) -> set[int]:
    """The replica processes running under the cluster's nodes."""
    out = set()
    for node in cluster.nodes:
        for pid in cluster.node_pids(node.ip):
            try:
                if b"stratum.serve" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.add(pid)
            except OSError:
                continue
    return out


def test_a_new_control_plane_adopts_the_replicas_on_the_cluster(
        shared: Settings, cluster: local.LocalCluster, deployed: dict[str, Any]) -> None:
    """The replicas' actors are detached and named: a control plane SIGKILLed and started
    again finds them, and serving never stops."""
    from stratum.control.client import ControlClient
    from stratum.control.discovery import read_record

    before = {int(r["pid"]) for r in _observed(shared)["replicas"]}
    assert before == _replica_pids(cluster)
    rec = read_record(shared)
    assert rec is not None
    load = BackgroundLoad(deployed["url"], "tiny", concurrency=4)
    try:
        os.kill(int(rec["pid"]), signal.SIGKILL)
        time.sleep(1.0)
        ControlClient(shared).url()  # what any CLI command does: start one
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            store = Store.open(shared)
            adopted = store.meta.events(subject="tiny", kind="deployment.adopted", limit=1)
            store.close()
            if adopted:
                break
            time.sleep(0.3)
        time.sleep(2.0)  # reconcile ticks: nothing restarted, nothing duplicated
    finally:
        result = load.stop()
    assert adopted and set(adopted[0].payload["replicas"]) == before
    assert _replica_pids(cluster) == before
    assert result.failed == [] and result.ok > 20, result.failed[:5]


def test_canary_and_rollback_work_unchanged_on_ray(
        shared: Settings, deployed: dict[str, Any]) -> None:
    """Ray places the processes; what the supervisor does with them is the same: a rolling
    update with a canary splits the traffic by weight, and a rollback returns, under load
    and with no failed request."""
    import asyncio

    store = Store.open(shared)
    try:
        assert register_tiny(store, seed=4) == 2
    finally:
        store.close()
    # Room for the new version's replicas: two nodes of 2 CPUs live after the node kill.
    _cli(shared, "scale", "tiny", "2", "--json")
    load = BackgroundLoad(deployed["url"], "tiny", concurrency=4)
    try:
        out = _cli(shared, "deploy", "tiny@2", "--canary", "tiny@1:30", "--backend", "ray",
                   "--cpus", "1", "--json", "--timeout", "120")
        assert sorted((t["version"], t["weight"]) for t in out["traffic"]) == [
            (1, 30.0), (2, 70.0)], out["traffic"]
        assert {r["host"] for r in _observed(shared)["replicas"]} - {"127.0.0.1"}
        split = asyncio.run(load_loop(deployed["url"], "tiny", 3.0, concurrency=4))
        out = _cli(shared, "rollback", "tiny", "--json", "--timeout", "120")
        assert {r["version"] for r in out["replicas"]} == {1}, out["replicas"]
    finally:
        result = load.stop()
    assert result.failed == [] and split.failed == [], (result.failed[:5], split.failed[:5])
    assert 0.15 <= split.versions["1"] / split.ok <= 0.45, split.versions
    out = _cli(shared, "scale", "tiny", str(REPLICAS), "--json", "--timeout", "120")
    assert out["status"] == "ready" and len(out["replicas"]) == REPLICAS, out


def _new_version(s: Settings, seed: int) -> int:
    store = Store.open(s)
    try:
        return register_tiny(store, seed=seed)
    finally:
        store.close()


def _spec(s: Settings) -> dict[str, Any]:
    store = Store.open(s)
    try:
        return dict(store.meta.deployment("tiny").spec)
    finally:
        store.close()


def _last_event(s: Settings) -> int:
    store = Store.open(s)
    try:
        return store.meta.events(limit=1)[0].id
    finally:
        store.close()


def _events(s: Settings, after: int) -> list[Any]:
    """Deployment tiny's events since event ``after``, oldest first."""
    store = Store.open(s)
    try:
        return store.meta.events(subject="tiny", after_id=after, limit=500)[::-1]
    finally:
        store.close()


def _samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """``(labels, value)`` of each sample of ``name`` on ``url``/metrics (open on gateways
    and replicas alike, as Prometheus needs)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [(s.labels, s.value) for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name]


def _mirrored(gateway_url: str, outcome: str) -> float:
    """Copies of requests the gateway sent its shadow, by ``outcome`` (ok, error, dropped)."""
    return sum(v for labels, v in _samples(gateway_url, "stratum_gateway_shadow_requests_total")
               if labels.get("outcome") == outcome)


def _predicts(replica_url: str) -> float:
    """Predictions a replica answered with 200."""
    return sum(v for labels, v in _samples(replica_url, "stratum_replica_requests_total")
               if labels.get("code") == "200" and "predict" in labels.get("route", ""))


def test_a_shadow_on_ray_gets_a_copy_and_answers_no_client(
        shared: Settings, cluster: local.LocalCluster, deployed: dict[str, Any]) -> None:
    """A shadow version's replica is placed on a node like any other; the gateway mirrors
    every request to it and clients only ever get the primary's answers."""
    import asyncio

    primary, shadow = int(_spec(shared)["version"]), _new_version(shared, seed=5)
    mark = _last_event(shared)
    load = BackgroundLoad(deployed["url"], "tiny", concurrency=4)
    try:
        # One replica fewer makes room for the shadow's: two nodes of 2 CPUs are left
        # after the node kill (the test after this one scales back).
        t0 = time.monotonic()
        out = _cli(shared, "deploy", f"tiny@{primary}", "--shadow", f"tiny@{shadow}",
                   "--replicas", str(REPLICAS - 1), "--json", "--timeout", "120")
        took = time.monotonic() - t0
    finally:
        during = load.stop()  # 0 failures while the shadow's replica started
    # The room is made first: the surplus replica stops, then the shadow's starts, the
    # first time (not after a start that waited for room in vain, 3 x connect_timeout_s).
    seen = _events(shared, mark)
    kinds = [e.kind for e in seen]
    assert "replica.failed" not in kinds and kinds.count("replica.started") == 1, [
        (e.ts.time().isoformat(), e.kind, e.payload) for e in seen]
    (rep,) = [r for r in out["replicas"] if r["version"] == shadow]
    assert rep["host"] in {n.ip for n in cluster.nodes} and rep["url"].startswith(
        f"http://{rep['host']}:"), rep
    assert {"version": shadow, "weight": 0, "shadow": True, "replicas": 1} in out["traffic"]
    gw = deployed["url"]
    before = (_predicts(rep["url"]), _mirrored(gw, "ok"))
    split = asyncio.run(load_loop(deployed["url"], "tiny", 3.0, concurrency=4))
    deadline = time.monotonic() + 10  # copies are fire and forget: let the last finish
    while time.monotonic() < deadline and (
            _mirrored(gw, "ok") - before[1] < split.ok
            or _predicts(rep["url"]) - before[0] < split.ok):
        time.sleep(0.2)
    copies = _predicts(rep["url"]) - before[0]
    gateway_ok = _mirrored(gw, "ok") - before[1]
    print(f"\nshadow v{shadow} on {rep['host']}, deployed in {took:.1f} s: {split.ok} client "
          f"requests answered by v{primary}, {copies:g} copies answered by the shadow")
    assert during.failed == [] and split.failed == [], (during.failed[:5], split.failed[:5])
    assert set(during.versions) == set(split.versions) == {str(primary)}, split.versions
    assert split.ok > 50 and copies >= split.ok and gateway_ok >= split.ok, (
        split.ok, copies, gateway_ok)
    assert _mirrored(gw, "dropped") == 0


def test_alias_following_hot_swaps_the_replicas_on_ray_in_place(
        shared: Settings, deployed: dict[str, Any]) -> None:
    """A deployment following ``production``: the alias moved under load, the supervisor
    follows it within its poll and swaps the new version into the running replicas on
    their nodes (same processes, no restart), with no failed request. A replica started
    afterwards (scaled back to 4) serves the version followed."""
    import asyncio

    old, new = int(_spec(shared)["version"]), _new_version(shared, seed=6)
    count = int(_spec(shared)["replicas"])
    store = Store.open(shared)
    try:
        store.meta.set_alias("tiny", "production", old)
        # Following drops the shadow of the test above: its replica drains and stops.
        out = _cli(shared, "deploy", "tiny@production", "--follow", "--json", "--timeout",
                   "120")
        assert out["follows"] == "production" and out["status"] == "ready", out
        before = {(r["id"], r["pid"], r["host"]) for r in out["replicas"]}
        assert len(before) == count and {r["version"] for r in out["replicas"]} == {old}
        mark = _last_event(shared)
        load = BackgroundLoad(deployed["url"], "tiny", concurrency=4)
        try:
            time.sleep(1.0)
            t0 = time.monotonic()
            store.meta.set_alias("tiny", "production", new)
            followed = swapped = None
            while time.monotonic() - t0 < 60:
                if followed is None and _spec(shared)["version"] == new:
                    followed = time.monotonic() - t0
                reps = _observed(shared).get("replicas") or []
                if followed is not None and len(reps) == count and all(
                        r["version"] == new and r["state"] == "ready" for r in reps):
                    swapped = time.monotonic() - t0
                    break
                time.sleep(0.1)
            time.sleep(1.0)  # the gateway's next table: only the new version answers
            after = asyncio.run(load_loop(deployed["url"], "tiny", 1.0, concurrency=4))
        finally:
            result = load.stop()
    finally:
        store.close()
    events = _events(shared, mark)
    print(f"\nproduction v{old} -> v{new}: followed in {followed} s, {count} replicas "
          f"hot-swapped in {swapped} s; {result.ok} requests, {len(result.failed)} failed")
    poll = shared.control.reconcile_interval_s
    assert followed is not None and followed < poll + 3.0, followed  # a tick, and slack
    assert swapped is not None, _observed(shared)
    assert result.failed == [] and after.failed == [], (result.failed[:5], after.failed[:5])
    assert set(result.versions) <= {str(old), str(new)} and result.versions[str(new)] > 0
    assert set(after.versions) == {str(new)} and after.ok > 20, after.versions
    # Swapped in place: the same replica processes on the same nodes, none started.
    assert {(r["id"], r["pid"], r["host"]) for r in _observed(shared)["replicas"]} == before
    kinds = [e.kind for e in events]
    assert "replica.started" not in kinds and kinds.count("replica.swapped") == count, kinds
    (follow,) = [e.payload for e in events if e.kind == "deployment.follow"]
    assert follow == {"alias": "production", "from": old, "to": new}, follow
    out = _cli(shared, "scale", "tiny", str(REPLICAS), "--json", "--timeout", "120")
    assert out["follows"] == "production" and out["status"] == "ready", out
    assert len(out["replicas"]) == REPLICAS and {r["version"] for r in out["replicas"]} == {new}


def test_auth_and_rate_limit_of_a_deployment_on_ray(
        shared: Settings, deployed: dict[str, Any]) -> None:
    """The deployment's own key requirement and rate limit, in front of Ray-placed
    replicas; turned off again, it serves openly."""
    alice = _cli(shared, "keys", "create", "alice", "--scope", "predict", "--json")
    bob = _cli(shared, "keys", "create", "bob", "--scope", "feedback", "--json")
    out = _cli(shared, "deploy", "tiny@production", "--auth", "--rate-limit", "0.2",
               "--rate-burst", "3", "--json", "--timeout", "120")
    assert out["follows"] == "production" and out["status"] == "ready", out  # still follows
    path = f"{deployed['url']}/v1/models/tiny:predict"
    try:
        assert httpx.post(path, json=SAMPLE, timeout=10).status_code == 401
        assert httpx.post(path, json=SAMPLE, headers={"x-api-key": "sk_00_bad"},
                          timeout=10).status_code == 401
        r = httpx.post(path, json=SAMPLE, headers={"authorization": f"Bearer {bob['key']}"},
                       timeout=10)
        assert r.status_code == 403 and "predict" in r.json()["message"], r.text
        auth = {"authorization": f"Bearer {alice['key']}"}
        r = httpx.post(f"{deployed['url']}/v1/models/tiny/feedback", timeout=10,
                       json={"request_id": "x", "label": 1}, headers=auth)
        assert r.status_code == 403 and "feedback" in r.json()["message"], r.text
        codes = [httpx.post(path, json=SAMPLE, headers=auth, timeout=10).status_code
                 for _ in range(8)]
        assert codes[:3] == [200] * 3 and 429 in codes[3:], codes
        assert httpx.get(f"{deployed['url']}/v2/health/ready").status_code == 200
    finally:
        out = _cli(shared, "deploy", "tiny@production", "--no-auth", "--json")
        _cli(shared, "keys", "revoke", alice["key_id"])
        _cli(shared, "keys", "revoke", bob["key_id"])
    assert out["follows"] == "production", out
    deadline = time.monotonic() + 10  # the gateway gets the table at its next push
    while time.monotonic() < deadline and not _serves(deployed["url"]):
        time.sleep(0.2)
    codes = [httpx.post(path, json=SAMPLE, timeout=10).status_code for _ in range(10)]
    assert codes == [200] * 10, codes  # no key, and no limit any more


def test_bad_input_is_refused_and_the_deployment_serves_on(
        tmp_path: Path, shared: Settings, cluster: local.LocalCluster,
        deployed: dict[str, Any]) -> None:
    before = _observed(shared)
    # A replica larger than any node: refused before anything is recorded, for a new
    # deployment and for the running one alike.
    out = _cli(shared, "deploy", "tiny@1", "--name", "big", "--backend", "ray", "--cpus", "64",
               "--port", str(free_port()), ok=False)
    assert "fits on no node" in out and "--cpus" in out, out
    out = _cli(shared, "deploy", "tiny@1", "--cpus", "64", ok=False)
    assert "fits on no node" in out, out
    assert _deployments(shared) == ["tiny"]
    assert _observed(shared)["generation"] == before["generation"]

    # A home whose store is files of this machine, first pointed at an address where
    # nothing answers, then at the cluster: two clear refusals, nothing recorded.
    dead = f"127.0.0.1:{free_port()}"
    files = _home(tmp_path / "files", dead, cluster={"address": dead, "connect_timeout_s": 3})
    try:
        t0 = time.monotonic()
        out = _cli(files, "deploy", "tiny@1", "--backend", "ray", "--port", str(free_port()),
                   ok=False)
        assert "cannot reach the Ray cluster" in out and dead in out, out
        assert time.monotonic() - t0 < 30
        out = _cli(files, "cluster", "status", ok=False)
        assert "cannot reach the Ray cluster" in out, out
        assert _deployments(files) == []
        stop_control_plane(files)
        files = _home(tmp_path / "files2", cluster.address)
        out = _cli(files, "deploy", "tiny@1", "--backend", "ray", "--port", str(free_port()),
                   ok=False)
        assert "SQLite" in out and "local folder" in out and "postgresql://" in out, out
        assert _deployments(files) == []
    finally:
        stop_control_plane(files)
    assert _serves(deployed["url"])
    now = _observed(shared)
    assert now["status"] == "ready" and len(now["replicas"]) == REPLICAS
    # SIGTERM to the control plane stops its replicas on the cluster too.
    stop_control_plane(shared)
    assert not _replica_pids(cluster)
