"""Control-plane failover on PostgreSQL: how long from the leader's SIGKILL until a
standby leads, and until it has adopted the running deployment, under load.

Two control planes against a fresh database on the machine's PostgreSQL; one deployment
(a tiny mlp, 2 replicas, 2 gateways) under a bounded client. Each round SIGKILLs the
leader, times the standby's takeover (``/health`` says leader) and its adoption (the
``deployment.adopted`` event), checks the replicas are the same processes, and starts a
fresh standby for the next round. The baseline in the same run is the time a control
plane takes to start cold and lead (what a restart without a standby costs).

    .venv/bin/python bench/failover.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stratum.config import load_settings  # noqa: E402
from stratum.config.child import start_python  # noqa: E402
from stratum.control.client import ControlClient  # noqa: E402
from stratum.store import Store  # noqa: E402
from tests.integration.gateway_fixtures import load_loop, register_tiny  # noqa: E402
from tests.services import drop_pg_database, free_port, fresh_pg_database  # noqa: E402


def role(port: int) -> str | None:
    try:
        return str(httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()["role"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def start(env: dict[str, str], logs: Path, i: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    out = open(logs / f"control-{i}.log", "ab")  # noqa: SIM115 - the child holds it
    proc = start_python("stratum.control", ["--port", str(port)], env=env, stdout=out,
                        stderr=subprocess.STDOUT, start_new_session=True)
    return proc, port


def wait(check: Any, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.02)
    raise TimeoutError("timed out")


def adopted(settings: Any, after: int) -> bool:
    store = Store.open(settings)
    try:
        return any(e.id > after for e in store.meta.events(subject="tiny",
                                                            kind="deployment.adopted"))
    finally:
        store.close()


def last_event_id(settings: Any) -> int:
    store = Store.open(settings)
    try:
        ev = store.meta.events(limit=1)
        return max((e.id for e in ev), default=0)
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    url, db = fresh_pg_database()
    tmp = Path(tempfile.mkdtemp(prefix="stratum-failover-"))
    settings = load_settings(home=tmp / "home", metadata_url=url, log_level="WARNING",
                             control={"reconcile_interval_s": 0.3})
    store = Store.open(settings)
    register_tiny(store, seed=1)
    store.close()
    env = {**settings.child_env(), "PYTHONPATH": str(ROOT)}
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, float]] = []
    cold: list[float] = []
    try:
        leader, lport = start(env, tmp, 0)
        procs.append(leader)
        cold.append(wait(lambda: role(lport) == "leader", 60))
        client = ControlClient(settings)
        gw = free_port()
        dep = client.deploy(model="tiny@1", replicas=2, gateways=2, port=gw)
        client.wait_ready("tiny", dep["generation"], timeout=120)
        stop = threading.Event()
        result: dict[str, Any] = {}
        load = threading.Thread(target=lambda: result.update(r=asyncio.run(load_loop(
            f"http://127.0.0.1:{gw}", "tiny", None, 8, stop=stop))), daemon=True)
        load.start()
        for i in range(1, args.rounds + 1):
            standby, sport = start(env, tmp, i)
            procs.append(standby)
            wait(lambda p=sport: role(p) == "standby", 60)
            before = {r["pid"] for r in client.call("GET", "/deployments/tiny")
                      ["observed"]["replicas"]}
            mark = last_event_id(settings)
            time.sleep(1.0)
            t_kill = time.monotonic()
            os.kill(leader.pid, signal.SIGKILL)
            leads = wait(lambda p=sport: role(p) == "leader", 30)
            wait(lambda m=mark: adopted(settings, m), 30)
            adopt = time.monotonic() - t_kill
            leader.wait(5)
            client = ControlClient(settings)
            after = {r["pid"] for r in client.call("GET", "/deployments/tiny")
                     ["observed"]["replicas"]}
            rows.append({"leads_s": leads, "adopted_s": adopt, "same": float(before == after)})
            print(f"round {i}: standby leads {leads:.2f} s, adopted {adopt:.2f} s after the "
                  f"kill, same replicas: {before == after}", flush=True)
            leader, lport = standby, sport
        # The baseline: a control plane started cold until it leads (no standby waiting).
        for _ in range(3):
            os.kill(leader.pid, signal.SIGKILL)
            leader.wait(5)
            leader, lport = start(env, tmp, 100 + len(cold))
            procs.append(leader)
            cold.append(wait(lambda p=lport: role(p) == "leader", 60))
        stop.set()
        load.join(60)
        res = result.get("r")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(3)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        drop_pg_database(db)
    leads = statistics.median(r["leads_s"] for r in rows)
    adopt = statistics.median(r["adopted_s"] for r in rows)
    base = statistics.median(cold[1:] or cold)
    print("\n| what | median s | ratio to a cold start |\n|---|---:|---:|")
    print(f"| cold start of a control plane until it leads (baseline) | {base:.2f} | 1.00 |")
    print(f"| SIGKILL of the leader → the standby leads | {leads:.2f} | {leads / base:.2f} |")
    print(f"| SIGKILL of the leader → deployment adopted | {adopt:.2f} | {adopt / base:.2f} |")
    print(f"\n{len(rows)} rounds; same replica processes every round: "
          f"{all(r['same'] for r in rows)}; requests under load: "
          f"{res.ok if res else '?'} ok, {len(res.failed) if res else '?'} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
