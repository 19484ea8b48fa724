"""Helpers for the gateway/control integration tests: tiny registered models, real
processes, and a bounded load loop that records every response."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from stratum.config import Settings
from stratum.store import ModelSpec, Store, register_model
from tests.services import free_port, started

FEATURES = 4
CLASSES = [0, 1, 2]
SAMPLE = {"instances": [[0.1, 0.2, 0.3, 0.4]]}
# What replicas and static gateways started by hand here share: the replicas' deployment
# secret and the token of the gateways' /admin/* (the supervisor makes its own of both).
REPLICA_SECRET = "test-replica-secret-0123456789abcdef"
REPLICA_AUTH = {"x-stratum-replica-secret": REPLICA_SECRET}  # straight to such a replica
GATEWAY_TOKEN = "test-gateway-token"
ADMIN = {"x-stratum-admin-token": GATEWAY_TOKEN}
# The environment of a control plane under test: quick reconciles, restarts and probes.
TUNING = {
    "STRATUM_CONTROL__RECONCILE_INTERVAL_S": "0.3",
    "STRATUM_CONTROL__RESTART_BACKOFF_S": "0.2",
    "STRATUM_GATEWAY__HEALTH_INTERVAL_S": "0.5",
    "STRATUM_GATEWAY__ROUTES_POLL_S": "0.3",
    "STRATUM_LOG_LEVEL": "WARNING",
}


def admin_headers(settings: Settings) -> dict[str, str]:
    """The home's admin token (made on first use) as a bearer header: the control plane's
    admin API and a named gateway's /admin/* accept it."""
    from stratum.security import ensure_admin_token

    store = Store.open(settings)
    try:
        return {"authorization": f"Bearer {ensure_admin_token(settings.home, store.meta)}"}
    finally:
        store.close()


def register_tiny(store: Store, name: str = "tiny", *, seed: int = 0,
                  broken: bool = False, hidden: tuple[int, ...] = (8,)) -> int:
    """Register a zoo mlp (4 → 8 → 3); ``broken`` stores weights of another shape so the
    version registers fine but cannot load; wider ``hidden`` layers give each request a
    real cost at the replica (what autoscaling needs to see load)."""
    import torch

    from stratum.models import build_model

    torch.manual_seed(seed)
    layers = [16] if broken else list(hidden)
    net = build_model("mlp", [FEATURES], len(CLASSES), hidden=layers)
    spec = ModelSpec(architecture="mlp", params={"hidden": list(hidden)},
                     input_shape=[FEATURES], classes=CLASSES)
    mv = register_model(store.meta, store.artifacts, name, spec, weights=net.state_dict())
    return mv.version


def child_env(settings: Settings) -> dict[str, str]:
    return settings.child_env()


@contextmanager
def replica(settings: Settings, ref: str, log: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with started([sys.executable, "-m", "stratum.serve", "--model", ref, "--port", str(port)],
                 ready_url=url + "/v2/health/ready", env=_env(settings), log=log, timeout=90):
        yield url


@contextmanager
def gateway(settings: Settings, replicas: list[str], log: Path,
            extra: list[str] | None = None, secret: str = REPLICA_SECRET,
            ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A static gateway in front of ``replicas`` started with ``secret``; its /admin/*
    takes ``ADMIN``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "stratum.gateway", "--port", str(port)]
    for r in replicas:
        args += ["--replica", r]
    with started(args + (extra or []), ready_url=url + "/v2/health/live",
                 env=_env(settings, secret), log=log, timeout=60) as proc:
        yield url, proc


def _env(settings: Settings, secret: str = REPLICA_SECRET) -> dict[str, str]:
    return {**settings.child_env(), "STRATUM_REPLICA_SECRET": secret,
            "STRATUM_GATEWAY_TOKEN": GATEWAY_TOKEN}


_PER_CLIENT = 8  # connections per httpx client in load_loop


@dataclass
class LoadResult:
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.ok + len(self.failed)


async def load_loop(url: str, model: str, seconds: float | None = None, concurrency: int = 20,
                    headers: dict[str, str] | None = None,
                    stop: threading.Event | None = None, verify: Any = True,
                    body: dict[str, Any] | None = None) -> LoadResult:
    """``concurrency`` clients sending single-sample predicts (or ``body``) back to back
    until ``seconds`` pass or ``stop`` is set; any non-200 or transport error counts as a
    failed request."""
    res = LoadResult()
    deadline = time.monotonic() + (seconds if seconds is not None else 600.0)
    # Connections are shared out over clients of at most _PER_CLIENT: httpcore's pool does
    # work per request that grows with its connections (one client at 64 costs ~7 ms of
    # CPU a request on this machine, 8 of 8 ~1.2 ms), and a slow client is what a test
    # would otherwise measure.
    per = min(concurrency, _PER_CLIENT)
    limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(
            base_url=url, timeout=15.0, limits=limits, verify=verify))
            for _ in range(-(-concurrency // per))]

        async def worker(client: httpx.AsyncClient) -> None:
            while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
                try:
                    r = await client.post(f"/v1/models/{model}:predict",
                                          json=body or SAMPLE, headers=headers)
                except httpx.HTTPError as exc:
                    res.failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                res.statuses[r.status_code] += 1
                if r.status_code == 200:
                    res.ok += 1
                    res.versions[r.headers.get("x-model-version", "?")] += 1
                else:
                    res.failed.append(f"{r.status_code}: {r.text[:200]}")

        await asyncio.gather(*(worker(clients[i // per]) for i in range(concurrency)))
    return res


class BackgroundLoad:
    """``load_loop`` in a thread until ``stop()``; ``result`` holds what it saw."""

    def __init__(self, url: str, model: str, concurrency: int = 20,
                 body: dict[str, Any] | None = None) -> None:
        self._stop = threading.Event()
        self.result = LoadResult()
        self._body = body
        self._thread = threading.Thread(target=self._run, args=(url, model, concurrency),
                                        daemon=True)
        self._thread.start()

    def _run(self, url: str, model: str, concurrency: int) -> None:
        self.result = asyncio.run(load_loop(url, model, None, concurrency, stop=self._stop,
                                            body=self._body))

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join(60)
        return self.result


def stop_control_plane(settings: Settings) -> None:
    """SIGTERM the home's control plane (its session holds its replicas and gateways
    too), then SIGKILL whatever is left after 20 s."""
    import os
    import signal

    from stratum.control.discovery import read_record

    rec = read_record(settings, check_alive=False)
    if rec is None:
        return
    pid = int(rec["pid"])
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _reap(pid)  # started by this test process (the CLI in-process): not a zombie
            os.killpg(pid, 0)
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


def _reap(pid: int) -> None:
    import os

    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its parent reaps it
