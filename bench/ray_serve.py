"""Serving with replicas placed by Ray against local replicas, side by side, in one run.

One control plane and two deployments of the same model (the mnist cnn, untrained:
throughput does not depend on the weights), 2 replicas each: ``local`` (processes of this
machine, the baseline) and ``ray`` (actors on a local 3-node Ray cluster started here,
each replica bound to its node's loopback address). Metadata in a fresh PostgreSQL
database, artifacts in a moto S3 server and the queue in Redis for both, since a cluster
of several nodes refuses this machine's files. Measured:

- deploy → ready: from the deploy call to the deployment reported ready;
- req/s through the gateway at 64 connections (wrk, OIP JSON, single samples), the two
  deployments measured in alternating order (``--repeats``), median of each; and straight
  to one replica of each (32 connections, its deployment secret), which separates the
  replica from how this one machine shares its cores out (see docs/cluster.md);
- replacement: a local replica SIGKILLed (the baseline) and a Ray worker node killed hard
  (its ``ray start``, raylet, workers and the replicas they host): from the kill until the
  deployment has its 2 replicas ready again.

    .venv/bin/python bench/ray_serve.py [--model cnn|mlp] [--seconds 5] [--repeats 2]

Needs wrk (`apt-get install -y wrk`), PostgreSQL and Redis on 127.0.0.1, and moto_server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve import LUA, MODELS, body_file, wrk  # noqa: E402

from stratum.cluster import local  # noqa: E402
from stratum.config import Settings, load_settings  # noqa: E402
from stratum.control.client import ControlClient  # noqa: E402
from stratum.models import build_model  # noqa: E402
from stratum.store import ModelSpec, Store, register_model  # noqa: E402
from stratum.store.runtime import RuntimeStore  # noqa: E402
from tests.integration.gateway_fixtures import stop_control_plane  # noqa: E402
from tests.services import (  # noqa: E402
    REDIS_URL,
    drop_pg_database,
    free_port,
    fresh_pg_database,
    started,
)

REPLICAS = 2


def register(settings: Settings, model: str) -> str:
    name, arch, shape = MODELS[model]
    torch.manual_seed(0)
    spec = ModelSpec(architecture=arch, input_shape=shape, classes=list(range(10)))
    store = Store.open(settings)
    try:
        register_model(store.meta, store.artifacts, name, spec,
                       weights=build_model(arch, shape, 10).state_dict())
    finally:
        store.close()
    return name


def observed(client: ControlClient, name: str) -> dict[str, Any]:
    out: dict[str, Any] = client.call("GET", f"/deployments/{name}").get("observed") or {}
    return out


def until(what: str, check: Callable[[], bool], timeout: float = 120.0) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(what)
        time.sleep(0.05)
    return time.monotonic() - t0


def deploy(client: ControlClient, model: str, name: str, backend: str) -> tuple[str, float]:
    port = free_port()
    t0 = time.monotonic()
    dep = client.deploy(model=f"{model}@1", name=name, replicas=REPLICAS, port=port,
                        backend=backend, cpus=1)
    client.wait_ready(name, dep["generation"], 180)
    return f"http://127.0.0.1:{port}", time.monotonic() - t0


def one_replica(settings: Settings, client: ControlClient, name: str) -> tuple[str, str]:
    """The URL of one of ``name``'s replicas and the deployment secret it takes."""
    store = Store.open(settings)
    try:
        runtime = RuntimeStore(store.meta).runtime(name)
    finally:
        store.close()
    assert runtime is not None
    return observed(client, name)["replicas"][0]["url"], runtime.secret


def back_to_full(client: ControlClient, name: str, gone: set[str]) -> Callable[[], bool]:
    """Whether ``name`` has its replicas ready again, none of them in ``gone``."""
    def check() -> bool:
        reps = observed(client, name).get("replicas") or []
        return len(reps) == REPLICAS and all(
            r["state"] == "ready" and r["id"] not in gone for r in reps)
    return check


def kill_local_replica(client: ControlClient, name: str) -> float:
    victim = observed(client, name)["replicas"][0]
    t0 = time.monotonic()
    os.kill(int(victim["pid"]), signal.SIGKILL)
    until("a local replacement", back_to_full(client, name, {victim["id"]}))
    return time.monotonic() - t0


def kill_ray_node(client: ControlClient, cluster: local.LocalCluster, name: str) -> float:
    reps = observed(client, name)["replicas"]
    workers = {n.ip for n in cluster.nodes if not n.head}
    victim = next(r["host"] for r in reps if r["host"] in workers)
    gone = {r["id"] for r in reps if r["host"] == victim}
    t0 = time.monotonic()
    cluster.kill_node(victim)
    until("a replacement on a live node", back_to_full(client, name, gone))
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="cnn")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-serve-"))
    moto_port = free_port()
    moto = f"http://127.0.0.1:{moto_port}"
    pg_url, db = fresh_pg_database()
    cluster = local.start(tmp / "cluster", nodes=3, cpus_per_node=2)
    settings: Settings | None = None
    try:
        with started([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                      "-p", str(moto_port)], ready_url=moto + "/moto-api/",
                     log=tmp / "moto.log"):
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            httpx.put(f"{moto}/{bucket}").raise_for_status()
            settings = load_settings(
                home=tmp / "home", metadata_url=pg_url, artifact_url=f"s3://{bucket}/a",
                queue_url=REDIS_URL,
                artifact_options={"key": "test", "secret": "test", "client_kwargs": {
                    "endpoint_url": moto, "region_name": "us-east-1"}},
                cluster={"address": cluster.address}, log_level="WARNING")
            model = register(settings, args.model)
            client = ControlClient(settings)
            urls, ready = {}, {}
            # The first replica of a model exports it to ONNX Runtime and caches that; a
            # deploy measured after it pays what every later one pays.
            deploy(client, model, "warm", "local")
            client.call("DELETE", "/deployments/warm", start=False)
            for backend in ("local", "ray"):
                urls[backend], ready[backend] = deploy(client, model, backend, backend)
            body = body_file(tmp, model, MODELS[args.model][2])
            lua = tmp / "bench.lua"
            lua.write_text(LUA)
            rps: dict[str, list[float]] = {"local": [], "ray": []}
            for backend in ("local", "ray"):  # warm: connections, pools, allocators
                wrk(f"{urls[backend]}/v2/models/{backend}/infer", body, lua,
                    args.connections, 2)
            direct: dict[str, list[float]] = {"local": [], "ray": []}
            for i in range(args.repeats):
                for backend in ("local", "ray") if i % 2 == 0 else ("ray", "local"):
                    r = wrk(f"{urls[backend]}/v2/models/{backend}/infer", body, lua,
                            args.connections, args.seconds)
                    assert r["failed"] == 0, r
                    rps[backend].append(r["rps"])
                    url, secret = one_replica(settings, client, backend)
                    r = wrk(f"{url}/v2/models/{model}/infer", body, lua, 32, args.seconds,
                            secret)
                    direct[backend].append(r["rps"])
            replaced = {"local": kill_local_replica(client, "local"),
                        "ray": kill_ray_node(client, cluster, "ray")}
    finally:
        if settings is not None:
            stop_control_plane(settings)
        local.stop(tmp / "cluster")
        drop_pg_database(db)
    med = {b: statistics.median(v) for b, v in rps.items()}
    one = {b: statistics.median(v) for b, v in direct.items()}
    print(f"\n{args.model}, {REPLICAS} replicas each, {args.connections} connections, "
          f"{args.repeats} x {args.seconds:g} s per path; 3-node local Ray cluster, "
          f"{os.cpu_count()} cores")
    print(f"{'':34} {'local':>10} {'ray':>10} {'ray/local':>10}")
    rows = [("req/s through the gateway", med["local"], med["ray"], "{:10.0f}"),
            ("req/s straight to one replica (32)", one["local"], one["ray"], "{:10.0f}"),
            ("deploy -> ready (s)", ready["local"], ready["ray"], "{:10.2f}"),
            ("death -> replacement ready (s)", replaced["local"], replaced["ray"],
             "{:10.2f}")]
    for label, lo, ra, fmt in rows:
        print(f"{label:34} {fmt.format(lo)} {fmt.format(ra)} {ra / lo:10.2f}")
    print("death: local = one replica SIGKILLed; ray = a worker node SIGKILLed whole")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
