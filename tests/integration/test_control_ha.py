"""No single point of failure in the control plane and the gateway, with real processes
under load from a bounded client:

- embedded (SQLite): a second control plane for the same home is refused; a SIGKILLed
  control plane restarted adopts the running replicas and gateway (same pids), with no
  failed request; routes live in the store, so a SIGKILLed gateway's replacement and a
  second gateway started by hand serve the current table at once;
- a deployment's rate limit holds across its two gateways (the buckets are shared);
- PostgreSQL: two control planes, one leads (advisory lock) and one stands by answering
  307 to the leader; the leader SIGKILLed under load, the standby leads within 5 s,
  adopts the same processes, and `scale` works right after; no failed request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from stratum.cli.main import app
from stratum.config import Settings, load_settings
from stratum.control.client import ControlClient
from stratum.control.discovery import read_record
from stratum.store import Store
from tests.integration.gateway_fixtures import (
    SAMPLE,
    TUNING,
    BackgroundLoad,
    admin_headers,
    register_tiny,
    stop_control_plane,
)
from tests.services import drop_pg_database, free_port, fresh_pg_database, started

pytestmark = pytest.mark.integration



def _settings(home: Path, **extra: Any) -> Settings:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in TUNING.items():
            mp.setenv(k, v)
        return load_settings(home=home, **extra)


def _deployment(settings: Settings, name: str = "tiny") -> dict[str, Any]:
    store = Store.open(settings)
    try:
        dep = store.meta.deployment(name)
        return {"generation": dep.generation, "status": dep.status, "spec": dep.spec,
                "observed": dep.observed}
    finally:
        store.close()


def _pids(dep: dict[str, Any]) -> tuple[set[int], set[int]]:
    """(replica pids, gateway pids) as the control plane last observed them."""
    obs = dep["observed"]
    return ({int(r["pid"]) for r in obs.get("replicas", [])},
            {int(g["pid"]) for g in obs.get("gateways", [])})


def _wait(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"


# -- embedded: SQLite, one instance ---------------------------------------------------------
class Embedded:
    def __init__(self, home: Path, settings: Settings, port: int) -> None:
        self.home, self.settings, self.port = home, settings, port
        self.url = f"http://127.0.0.1:{port}"

    def cli(self, *args: str) -> Any:
        import orjson

        result = CliRunner().invoke(app, ["--home", str(self.home), *args], env=TUNING)
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
        return orjson.loads(result.stdout) if "--json" in args else result.stdout


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    home = tmp_path_factory.mktemp("ha") / "home"
    settings = _settings(home)
    store = Store.open(settings)
    assert register_tiny(store, seed=1) == 1
    store.close()
    e = Embedded(home, settings, free_port())
    groups: set[int] = set()
    try:
        e.cli("deploy", "tiny@1", "--replicas", "2", "--gateways", "2", "--port", str(e.port),
              "--json")
        rec = read_record(settings)
        assert rec is not None
        groups.add(int(rec["pid"]))
        yield e
    finally:
        rec = read_record(settings, check_alive=False)
        if rec is not None:
            groups.add(int(rec["pid"]))
        stop_control_plane(settings)
        for g in groups:  # adopted processes stay in the first control plane's group
            try:
                os.killpg(g, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_second_control_plane_for_the_same_home_is_refused(embedded: Embedded) -> None:
    rec = read_record(embedded.settings)
    assert rec is not None
    proc = subprocess.run([sys.executable, "-m", "stratum.control", "--port", str(free_port())],
                          env={**os.environ, **embedded.settings.child_env()},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "already runs" in proc.stderr and str(rec["pid"]) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert read_record(embedded.settings) == rec  # the running one is untouched


def test_a_restarted_control_plane_adopts_what_runs(embedded: Embedded) -> None:
    s = embedded.settings
    replicas, gateways = _pids(_deployment(s))
    assert len(replicas) == 2 and len(gateways) == 2
    rec = read_record(s)
    assert rec is not None
    load = BackgroundLoad(embedded.url, "tiny", concurrency=8)
    try:
        time.sleep(1.0)
        os.kill(int(rec["pid"]), signal.SIGKILL)  # the control plane alone
        _wait("the old control plane to die", lambda: not _alive(int(rec["pid"])))
        time.sleep(1.0)  # serving goes on without it
        status = embedded.cli("status", "--json")  # says nobody watches, not "ready"
        assert status["control"]["running"] is False
        assert status["deployments"][0]["status"].startswith("unknown (last seen ready")
        ControlClient(s).url()  # what any CLI command does: start one
        new = read_record(s)
        assert new is not None and new["pid"] != rec["pid"]
        events = _wait("the adoption event", lambda: _events(s, "deployment.adopted"))
        assert set(events[-1]["replicas"]) == replicas
        assert set(events[-1]["gateways"]) == gateways
        time.sleep(2.0)  # several reconcile ticks: nothing is restarted or duplicated
        dep = _deployment(s)
        assert _pids(dep) == (replicas, gateways), dep["observed"]
        assert dep["status"] == "ready"
    finally:
        result = load.stop()
    assert result.ok > 100 and result.failed == [], result.failed[:5]
    # It leads for real: a scale works and keeps the adopted replicas.
    out = embedded.cli("scale", "tiny", "3", "--json")
    now, _ = _pids(_deployment(s))
    assert len(out["replicas"]) == 3 and replicas <= now


def _events(settings: Settings, kind: str) -> list[dict[str, Any]]:
    store = Store.open(settings)
    try:
        return [e.payload for e in reversed(store.meta.events(subject="tiny", kind=kind))]
    finally:
        store.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_gateway_dies_under_load_and_its_sibling_serves(embedded: Embedded,
                                                         sig: signal.Signals) -> None:
    """Two gateways share the port. SIGTERM one: it finishes what it holds and closes
    (0 failed). SIGKILL one: only the requests it held fail (at most the client's
    concurrency). Either way the slot comes back with the current routes."""
    s = embedded.settings
    _, before = _pids(_deployment(s))
    assert len(before) == 2
    victim = min(before)
    concurrency = 8
    load = BackgroundLoad(embedded.url, "tiny", concurrency=concurrency)
    try:
        time.sleep(1.0)
        os.kill(victim, sig)

        def replaced() -> bool:
            dep = _deployment(s)
            _, now = _pids(dep)
            return (victim not in now and len(now) == 2
                    and all(g["live"] for g in dep["observed"]["gateways"]))

        _wait("the slot to come back", replaced, timeout=30)
        time.sleep(1.0)
    finally:
        result = load.stop()
    allowed = 0 if sig == signal.SIGTERM else concurrency
    assert result.ok > 100 and len(result.failed) <= allowed, result.failed[:10]
    print(f"gateway {sig.name}: {len(result.failed)} failed of {result.total}")


def test_a_second_gateway_started_by_hand_gets_the_routes(embedded: Embedded,
                                                          tmp_path: Path) -> None:
    s = embedded.settings
    port = free_port()
    second = f"http://127.0.0.1:{port}"
    admin = admin_headers(s)
    with started([sys.executable, "-m", "stratum.gateway", "--name", "tiny", "--port",
                  str(port)], ready_url=second + "/v2/health/ready", env=s.child_env(),
                 log=tmp_path / "second-gateway.log", timeout=60):
        # Ready means routed: the very first predict after it reports ready is served.
        r = httpx.post(second + "/v1/models/tiny:predict", json=SAMPLE, timeout=10)
        assert r.status_code == 200, r.text
        # A change of routes reaches the gateway started by hand too (from the store).
        embedded.cli("scale", "tiny", "2", "--json")
        first = _deployment(s)["observed"]["gateways"][0]["admin_port"]

        def same_table() -> bool:
            a = httpx.get(f"http://127.0.0.1:{first}/admin/routes", headers=admin,
                          timeout=5).json()
            b = httpx.get(second + "/admin/routes", headers=admin, timeout=5).json()
            return a["etag"] == b["etag"] and len(b["replicas"]) == 2

        _wait("the second gateway to follow the new routes", same_table, timeout=20)


def _served(metrics_url: str, code: str) -> int:
    """How many requests for tiny this gateway answered with ``code``, from its /metrics."""
    text = httpx.get(metrics_url, timeout=5).text
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("stratum_gateway_requests_total{")
               and 'model="tiny"' in line and f'code="{code}"' in line)


def test_a_deployments_rate_limit_holds_across_its_gateways(embedded: Embedded) -> None:
    """``--rate-limit R --rate-burst B`` on a deployment with two gateways: clients on
    fresh connections reach both (SO_REUSEPORT spreads them), and both together let
    through at most B + R x elapsed, where each gateway's own buckets let through twice
    that. Last of the embedded tests: the limit stays on the deployment."""
    rate, burst = 10.0, 10
    embedded.cli("deploy", "tiny@1", "--rate-limit", str(rate), "--rate-burst", str(burst),
                 "--json")
    admin = admin_headers(embedded.settings)
    gateways = [f"http://127.0.0.1:{g['admin_port']}"
                for g in _deployment(embedded.settings)["observed"]["gateways"]]
    assert len(gateways) == 2

    def limited_everywhere() -> bool:
        tables = [httpx.get(f"{g}/admin/routes", headers=admin, timeout=5).json()
                  for g in gateways]
        return all((t["routes"]["deployments"]["tiny"].get("limits") or {}).get(
            "rate_limit_per_s") == rate for t in tables)

    _wait("both gateways to have the limit", limited_everywhere, timeout=20)
    before = [(_served(f"{g}/metrics", "200"), _served(f"{g}/metrics", "429"))
              for g in gateways]
    answers: list[int] = []
    t0 = time.monotonic()
    end = t0 + 3.0

    def client() -> None:
        # No keep-alive: a new connection per request, as from many clients.
        with httpx.Client(base_url=embedded.url, timeout=10,
                          limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while time.monotonic() < end:
                answers.append(c.post("/v1/models/tiny:predict", json=SAMPLE).status_code)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    codes = Counter(answers)
    after = [(_served(f"{g}/metrics", "200"), _served(f"{g}/metrics", "429"))
             for g in gateways]
    per_gateway = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)]
    allowed = burst + rate * elapsed
    print(f"rate limit across 2 gateways: {codes[200]} of {sum(codes.values())} admitted in "
          f"{elapsed:.2f} s (at most {allowed:.0f}); per gateway (200, 429): {per_gateway}")
    assert set(codes) == {200, 429}, codes
    assert all(ok > 0 and refused > 0 for ok, refused in per_gateway), per_gateway
    assert 0.8 * allowed <= codes[200] <= allowed + 2, (codes, allowed)
    # The buckets' table lives in the private home like everything there.
    (table,) = (embedded.home / "ratelimit").iterdir()
    assert table.stat().st_mode & 0o777 == 0o600 and table.parent.stat().st_mode & 0o777 == 0o700


# -- PostgreSQL: a leader and a standby ---------------------------------------------------
@pytest.fixture(scope="module")
def pg_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    url, db = fresh_pg_database()
    root = tmp_path_factory.mktemp("ha-pg")
    settings = _settings(root / "home", metadata_url=url)
    store = Store.open(settings)
    assert register_tiny(store, seed=1) == 1
    store.close()
    ports = [free_port(), free_port()]
    env = settings.child_env()
    with ExitStack() as stack:
        procs = []
        for i, port in enumerate(ports):
            procs.append(stack.enter_context(started(
                [sys.executable, "-m", "stratum.control", "--port", str(port)],
                ready_url=f"http://127.0.0.1:{port}/health", env=env,
                log=root / f"control-{i}.log", timeout=60)))
            if i == 0:  # the first one leads before the second starts
                _wait("the first to lead", lambda: _role(ports[0]) == "leader")
        try:
            yield {"settings": settings, "ports": ports, "procs": procs, "root": root}
        finally:
            stop_control_plane(settings)
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    drop_pg_database(db)


def _role(port: int) -> str | None:
    try:
        return str(httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()["role"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def test_one_leads_the_other_stands_by_and_takes_over(pg_pair: dict[str, Any]) -> None:
    s: Settings = pg_pair["settings"]
    leader, standby = pg_pair["ports"]
    assert _role(leader) == "leader" and _role(standby) == "standby"
    admin = admin_headers(s)
    # A standby sends every admin call to the leader.
    r = httpx.get(f"http://127.0.0.1:{standby}/deployments", headers=admin, timeout=5)
    assert r.status_code == 307 and r.headers["location"] == \
        f"http://127.0.0.1:{leader}/deployments"
    client = ControlClient(s)
    gw_port = free_port()
    dep = client.deploy(model="tiny@1", replicas=2, port=gw_port)
    client.wait_ready("tiny", dep["generation"], timeout=120)
    replicas, gateways = _pids(_deployment(s))
    load = BackgroundLoad(f"http://127.0.0.1:{gw_port}", "tiny", concurrency=8)
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        os.kill(pg_pair["procs"][0].pid, signal.SIGKILL)
        _wait("the standby to lead", lambda: _role(standby) == "leader", timeout=10)
        failover = time.monotonic() - t0
        time.sleep(2.0)
        assert _pids(_deployment(s)) == (replicas, gateways)
    finally:
        result = load.stop()
    assert failover <= 5.0, failover
    assert result.ok > 100 and result.failed == [], result.failed[:5]
    # The new leader acts: scale right after, through the client (it finds the leader).
    client = ControlClient(s)
    out = client.call("POST", "/deployments/tiny/scale", {"replicas": 3})
    ready = client.wait_ready("tiny", out["generation"], timeout=120)
    now = {int(r["pid"]) for r in ready["observed"]["replicas"]}
    assert len(now) == 3 and replicas <= now
    print(f"leader failover: {failover:.2f} s")


def test_a_leader_that_loses_its_database_connection_stands_by(
        pg_pair: dict[str, Any]) -> None:
    """What a PostgreSQL restart does to the leader, without restarting the machine's
    server: its lock connection is terminated. It stops leading at once without touching
    the processes; an instance leads again (the other, or itself once it reconnects) and
    adopts them. Serving never notices."""
    from sqlalchemy import create_engine, text

    s: Settings = pg_pair["settings"]
    _, survivor = pg_pair["ports"]  # leads since the previous test
    assert _role(survivor) == "leader"
    third = free_port()
    with started([sys.executable, "-m", "stratum.control", "--port", str(third)],
                 ready_url=f"http://127.0.0.1:{third}/health", env=s.child_env(),
                 log=pg_pair["root"] / "control-2.log", timeout=60):
        assert _role(third) == "standby"
        replicas, gateways = _pids(_deployment(s))
        gw_port = _deployment(s)["spec"]["port"]
        load = BackgroundLoad(f"http://127.0.0.1:{gw_port}", "tiny", concurrency=8)
        try:
            time.sleep(1.0)
            engine = create_engine(str(s.metadata_url).replace(
                "postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
            with engine.connect() as c:
                killed = c.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )).scalars().all()
            engine.dispose()
            assert killed == [True]
            _wait("one leader again", lambda: sorted(
                [_role(survivor), _role(third)]) == ["leader", "standby"], timeout=10)
            time.sleep(2.0)
            assert _pids(_deployment(s)) == (replicas, gateways)
        finally:
            result = load.stop()
        assert result.ok > 100 and result.failed == [], result.failed[:5]
        # Whoever leads now acts.
        client = ControlClient(s)
        out = client.call("POST", "/deployments/tiny/scale", {"replicas": 2})
        ready = client.wait_ready("tiny", out["generation"], timeout=120)
        assert len(ready["observed"]["replicas"]) == 2
