"""Autoscaling with every part a real process: the CLI starts the control plane, which
starts the replicas and the gateway; a bounded client loads the gateway over HTTP.

One deployment lives through the module (min 1, max 3 replicas, a target of 4 in flight
per replica, a 5 s cooldown; the machine has 2 cores):

- v1, the tiny mlp with two hidden layers of 2048 and one compute thread per replica, and
  requests of 64 rows: each costs the replica tens of milliseconds, so that the replicas,
  not the Python load client, are what 64 connections wait for (with the 8-wide mlp and
  one-row requests the client is the bottleneck, nothing queues at the replicas and more
  of them would not help: the autoscaler rightly keeps one). A step from 1 to 64
  connections grows it from 1 to 3 ready, routed replicas within 30 s; once the step ends
  (one connection stays, so the scale-down drains replicas under traffic) it shrinks back
  to 1 within cooldown + 30 s; not one request fails;
- v2, the plain tiny mlp, deployed with ``--min-replicas 0``: it goes to zero replicas when
  idle, and the first request after that is held by the gateway while a replica starts,
  and succeeds. Its latency is printed (run with ``-s``);
- ``stratum scale`` then fixes the count and says that autoscaling is off.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from stratum.cli.main import app
from stratum.config import Settings, load_settings
from stratum.control.discovery import read_record
from stratum.store import Store
from tests.integration.gateway_fixtures import (
    SAMPLE,
    BackgroundLoad,
    admin_headers,
    register_tiny,
    stop_control_plane,
)
from tests.services import free_port

pytestmark = pytest.mark.integration

COOLDOWN_S = 5.0
HEAVY = {"instances": [[0.1, 0.2, 0.3, 0.4]] * 64}
TUNING = {
    "STRATUM_CONTROL__RECONCILE_INTERVAL_S": "0.3",
    "STRATUM_CONTROL__RESTART_BACKOFF_S": "0.2",
    "STRATUM_CONTROL__AUTOSCALE_INTERVAL_S": "0.3",
    "STRATUM_CONTROL__AUTOSCALE_WINDOW_S": "2",
    "STRATUM_GATEWAY__HEALTH_INTERVAL_S": "0.5",
    "STRATUM_SERVE__RUNTIME_THREADS": "1",
    "STRATUM_LOG_LEVEL": "WARNING",
}


class Deployment:
    def __init__(self, home: Path, settings: Settings, port: int) -> None:
        self.home, self.settings, self.port = home, settings, port
        self.url = f"http://127.0.0.1:{port}"
        self.runner = CliRunner()
        self.admin: dict[str, str] = {}

    def cli(self, *args: str) -> Any:
        result = self.runner.invoke(app, ["--home", str(self.home), *args], env=TUNING)
        assert result.exit_code == 0, (result.output, result.exception)
        return orjson.loads(result.stdout) if "--json" in args else result.stdout

    def control(self, path: str, **params: Any) -> Any:
        rec = read_record(self.settings)
        assert rec is not None, "the control plane is not running"
        r = httpx.get(rec["url"] + path, headers=self.admin, params=params, timeout=10)
        r.raise_for_status()
        return r.json()

    def wait_for(self, what: str, check: Callable[[dict[str, Any]], bool],
                 timeout: float, since: float | None = None) -> float:
        """Seconds from ``since`` (default: now) until ``check(deployment)`` holds; fails
        after ``timeout``."""
        t0 = time.monotonic() if since is None else since
        dep: dict[str, Any] = {}
        while time.monotonic() - t0 < timeout:
            dep = self.control("/deployments/tiny")
            if check(dep):
                return time.monotonic() - t0
            time.sleep(0.2)
        raise AssertionError(f"no {what} within {timeout} s: spec replicas "
                             f"{dep.get('spec', {}).get('replicas')}, observed "
                             f"{dep.get('observed')}")

    def autoscaled(self) -> list[dict[str, Any]]:
        events = self.control("/events", subject="tiny", limit=200)
        return [e["payload"] for e in reversed(events) if e["kind"] == "deployment.autoscaled"]


def serving(n: int) -> Callable[[dict[str, Any]], bool]:
    """Exactly ``n`` replica processes, all ready and all in the routing table."""
    def check(dep: dict[str, Any]) -> bool:
        obs = dep.get("observed") or {}
        reps = obs.get("replicas", [])
        routed = sum(t["replicas"] for t in obs.get("traffic", []) if not t.get("shadow"))
        return (dep["spec"]["replicas"] == n and len(reps) == n and routed == n
                and all(r["state"] == "ready" for r in reps))
    return check


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("autoscale") / "home"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in TUNING.items():
            mp.setenv(k, v)
        settings = load_settings(home=home)
    store = Store.open(settings)
    assert register_tiny(store, seed=1, hidden=(2048, 2048)) == 1
    assert register_tiny(store, seed=2) == 2
    store.close()
    d = Deployment(home, settings, free_port())
    try:
        out = d.cli("deploy", "tiny@1", "--min-replicas", "1", "--max-replicas", "3",
                    "--target-inflight", "4", "--scale-down-cooldown", str(COOLDOWN_S),
                    "--port", str(d.port), "--json")
        assert out["autoscale"] == {"min_replicas": 1, "max_replicas": 3,
                                    "target_inflight": 4.0,
                                    "scale_down_cooldown_s": COOLDOWN_S}
        d.admin = admin_headers(settings)
        yield d
    finally:
        stop_control_plane(settings)


def test_a_step_of_load_grows_to_max_and_shrinks_back_with_no_failed_request(
        deployment: Deployment) -> None:
    d = deployment
    light = BackgroundLoad(d.url, "tiny", concurrency=1, body=HEAVY)
    try:
        time.sleep(4)  # one connection is under the target: no scale-up
        assert serving(1)(d.control("/deployments/tiny")) and d.autoscaled() == []
        step = BackgroundLoad(d.url, "tiny", concurrency=63, body=HEAVY)  # 1 + 63 = 64
        try:
            grow_s = d.wait_for("growth to 3 replicas", serving(3), timeout=30)
            time.sleep(2)  # serving on all three
            during = d.autoscaled()
        finally:
            ended = time.monotonic()
            loaded = step.stop()  # its requests in flight finish first
        shrink_s = d.wait_for("shrinking back to 1 replica", serving(1),
                              timeout=COOLDOWN_S + 30, since=ended)
    finally:
        trickle = light.stop()
    events = d.autoscaled()
    print(f"\nautoscale: 1 -> 3 replicas in {grow_s:.1f} s after the step to 64 connections "
          f"({loaded.total} requests under the step); 3 -> 1 in {shrink_s:.1f} s after it "
          f"ended (cooldown {COOLDOWN_S:g} s); events: "
          f"{[(e['from'], e['to'], e['reason']) for e in events]}")
    assert loaded.failed == [] and trickle.failed == [], (loaded.failed[:5], trickle.failed[:5])
    assert loaded.ok > 100 and trickle.ok > 10
    assert grow_s <= 30 and shrink_s <= COOLDOWN_S + 30
    assert all(e["to"] > e["from"] for e in during), [  # no scale-down under the step
        (e["from"], e["to"], e["reason"], e["signal"]) for e in during]
    # Up in one or two decisions (the window's mean ramps up), on what was in flight.
    assert during and during[-1]["to"] == 3 and len(during) <= 2
    assert all(e["reason"] == "load" and e["signal"]["inflight"] > 4 for e in during)
    assert events[-1]["to"] == 1 and events[-1]["reason"] in ("idle", "low load")
    assert all(1 <= e["to"] <= 3 for e in events)


def test_scale_from_zero_holds_the_first_request_until_a_replica_is_ready(
        deployment: Deployment) -> None:
    d = deployment
    t_set = time.monotonic()
    out = d.cli("deploy", "tiny@2", "--min-replicas", "0", "--json")
    assert out["autoscale"]["min_replicas"] == 0 and out["autoscale"]["max_replicas"] == 3
    # Idle for a cooldown: the last replica is drained and stopped; the gateway stays.
    idle_s = d.wait_for("scale to zero", lambda dep: dep["spec"]["replicas"] == 0 and not (
        dep.get("observed") or {}).get("replicas"), timeout=COOLDOWN_S + 60, since=t_set)
    assert httpx.get(f"{d.url}/v2/health/live", timeout=5).status_code == 200
    t0 = time.monotonic()
    first = httpx.post(f"{d.url}/v1/models/tiny:predict", json=SAMPLE, timeout=60)
    latency = time.monotonic() - t0
    print(f"\nscale from zero: v2 at zero replicas {idle_s:.1f} s after `deploy tiny@2 "
          f"--min-replicas 0` (a rolling update, then a cooldown of no load); the first "
          f"request answered {first.status_code} in {latency:.2f} s")
    assert first.status_code == 200, first.text
    assert first.headers["x-model-version"] == "2"
    assert first.json()["predictions"][0]["class"] in (0, 1, 2)
    woke = d.autoscaled()[-1]
    assert woke["from"] == 0 and woke["to"] == 1 and woke["signal"]["waiting"] >= 1
    assert latency < d.settings.gateway.hold_timeout_s
    second = httpx.post(f"{d.url}/v1/models/tiny:predict", json=SAMPLE, timeout=10)
    assert second.status_code == 200
    dep = d.control("/deployments/tiny")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["autoscale"]["min_replicas"] == 0


def test_a_fixed_count_turns_autoscaling_off_and_says_so(deployment: Deployment) -> None:
    out = deployment.cli("scale", "tiny", "2", "--json")
    assert out["notice"].startswith("autoscaling off: fixed at 2 replica(s)")
    assert out["autoscale"] is None and len(out["replicas"]) == 2
