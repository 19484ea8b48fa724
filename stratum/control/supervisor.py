"""The supervisor: one reconcile loop from the deployments wanted (in the store) to the
processes running, in the manner of Ray Serve's controller.

Every tick, for every deployment, it: reaps exited processes (a crash schedules a restart
with exponential backoff), probes starting replicas until ready, starts what is missing,
starts the gateway, computes the routing table from the *ready* replicas and PUTs it to the
gateway, and only once the gateway has acknowledged a table that no longer names a
replica does it drain and stop that replica. A rolling update, a scale, a canary and a
crash recovery are therefore the same loop: nothing is stopped before its replacement
serves and the gateway has moved traffic away from it, which is what makes them lossless.

A new version whose replicas fail to start ``start_attempts`` times is given up: the
wanted state reverts to the version still serving and ``observed.last_error`` says why.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from stratum.config import Settings
from stratum.control.procs import Proc, free_port, spawn
from stratum.control.routing import compute_routes, to_retire
from stratum.control.spec import DeploymentSpec, followed, load_spec
from stratum.store.metadata import MetadataStore

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ReplicaProc:
    id: str
    version: int
    port: int
    proc: Proc
    state: str = "starting"  # starting → ready → draining; gone once the process exits
    swapping: int | None = None  # the version a hot swap is loading, while it does
    started: float = field(default_factory=time.monotonic)
    healthy: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(eq=False)
class DeploymentState:
    name: str
    spec: DeploymentSpec | None = None
    generation: int = 0
    replicas: dict[str, ReplicaProc] = field(default_factory=dict)
    gateway: Proc | None = None
    gateway_port: int | None = None
    gateway_live: bool = False
    gateway_failures: int = 0
    pushed_etag: str | None = None
    traffic: list[dict[str, Any]] = field(default_factory=list)
    start_failures: Counter[int] = field(default_factory=Counter)
    crash_streak: Counter[int] = field(default_factory=Counter)
    next_start: dict[int | str, float] = field(default_factory=dict)
    good_versions: set[int] = field(default_factory=set)
    given_up: set[int] = field(default_factory=set)  # versions that never got ready
    last_error: dict[str, Any] | None = None
    last_observed: dict[str, Any] | None = None
    seq: int = 0


class Supervisor:
    def __init__(self, settings: Settings, meta: MetadataStore) -> None:
        self.settings = settings
        self.cfg = settings.control
        self.meta = meta
        self.states: dict[str, DeploymentState] = {}
        self.token = secrets.token_urlsafe(24)  # lets us reach the gateways' /admin/*
        self.http = httpx.AsyncClient(timeout=2.0)
        self._env = {**settings.child_env(), "STRATUM_GATEWAY_TOKEN": self.token}
        self._logs = settings.home.expanduser().resolve() / "logs"
        self._stopping: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                busy = await self.tick()
            except Exception:  # the loop must outlive any one bad tick
                log.exception("reconcile tick failed")
                busy = False
            interval = min(self.cfg.reconcile_interval_s, 0.2) if busy else \
                self.cfg.reconcile_interval_s
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), interval)
            except TimeoutError:
                pass

    async def tick(self) -> bool:
        """One pass over every deployment; True while something is in transition."""
        rows = {d.name: d for d in await asyncio.to_thread(self.meta.deployments)}
        if await asyncio.to_thread(self._follow_aliases, rows):
            rows = {d.name: d for d in await asyncio.to_thread(self.meta.deployments)}
        for name, row in rows.items():
            st = self.states.get(name)
            if st is None:
                st = self.states[name] = DeploymentState(name)
            if row.generation != st.generation:
                st.spec, st.generation = load_spec(row.spec), row.generation
                st.start_failures.clear()
                st.next_start.clear()
        for name, st in list(self.states.items()):
            if name not in rows:
                st.spec = None
        results = await asyncio.gather(*(self._reconcile(st) for st in self.states.values()))
        for name, st in list(self.states.items()):
            if st.spec is None and not st.replicas and st.gateway is None:
                del self.states[name]
                await self._event("deployment.stopped", name, {})
        return any(results)

    async def _reconcile(self, st: DeploymentState) -> bool:
        await self._reap(st)
        await self._probe(st)
        spec = st.spec
        if spec is None:  # undeployed: gateway first, so clients stop arriving
            if st.gateway is not None:
                st.gateway.terminate()
            for r in list(st.replicas.values()):
                self._retire(st, r, drain=False)
            return True
        if await self._give_up_failed(st, spec):
            return True
        if spec.follow is not None:
            self._swap_stale(st, spec)
        self._start_missing(st, spec)
        self._ensure_gateway(st, spec)
        routes, traffic, serving = compute_routes(st.name, spec, st.replicas.values())
        if (routes is not None and st.gateway_live and routes.etag() != st.pushed_etag
                and await self._push(st, routes.model_dump_json())):
            st.pushed_etag = routes.etag()
            st.traffic = traffic
            await self._event("deployment.routes", st.name, {"traffic": traffic})
        if routes is not None and st.pushed_etag == routes.etag():
            # Not "every ready replica outside the table": a new version's replica that
            # is ready while its siblings still start must stay (to_retire knows).
            retire = to_retire(spec, st.replicas.values(), serving)
            for r in list(st.replicas.values()):
                if r.id in retire:
                    self._retire(st, r, drain=True)
                elif r.state == "starting" and r.version not in spec.versions():
                    self._retire(st, r, drain=False)
        return await self._observe(st, spec, converged=routes is not None
                                   and st.pushed_etag == routes.etag())

    def _follow_aliases(self, rows: dict[str, Any]) -> bool:
        """Roll deployments that follow an alias onto where it points now (blocking)."""
        moved = False
        for name, row in rows.items():
            spec = load_spec(row.spec)
            if spec is None or spec.follow is None:
                continue
            target = self.meta.aliases(spec.model).get(spec.follow)
            if target is None or target == spec.version:
                continue
            st = self.states.get(name)
            if st is not None and target in st.given_up:
                continue  # it failed to start; wait for the alias to move on
            self.meta.put_deployment(name, followed(spec, target).model_dump(mode="json"))
            self.meta.add_event("deployment.follow", name, {
                "alias": spec.follow, "from": spec.version, "to": target})
            moved = True
        return moved

    # -- processes -------------------------------------------------------------------------
    async def _reap(self, st: DeploymentState) -> None:
        now = time.monotonic()
        for r in list(st.replicas.values()):
            if r.proc.alive():
                if r.state == "starting" and now - r.started > self.cfg.ready_timeout_s:
                    r.proc.kill()  # counted as a failed start when reaped
                continue
            del st.replicas[r.id]
            info = {"replica": r.id, "version": r.version, "pid": r.proc.pid, "port": r.port,
                    "exit": r.proc.returncode}
            if r.state == "draining":
                await self._event("replica.stopped", st.name, info)
            elif r.state == "starting":
                st.start_failures[r.version] += 1
                st.next_start[r.version] = now + self._backoff(st.start_failures[r.version])
                tail = r.proc.log_tail()
                st.last_error = {"generation": st.generation, "version": r.version,
                                 "message": f"replica {r.id} of v{r.version} exited before "
                                            f"it was ready: {tail[-600:]}"}
                await self._event("replica.failed", st.name, {**info, "log": tail[-600:]})
            else:
                st.crash_streak[r.version] += 1
                st.next_start[r.version] = now + self._backoff(st.crash_streak[r.version])
                await self._event("replica.crashed", st.name, info)
        gw = st.gateway
        if gw is not None and not gw.alive():
            st.gateway, st.gateway_live, st.pushed_etag = None, False, None
            if st.spec is not None and st.spec.port == st.gateway_port:  # else: we moved it
                st.gateway_failures += 1
                st.next_start["gateway"] = now + self._backoff(st.gateway_failures)
                st.last_error = {"generation": st.generation, "message":
                                 f"gateway on port {st.gateway_port} exited: "
                                 f"{gw.log_tail()[-600:]}"}
                await self._event("gateway.crashed", st.name,
                                  {"pid": gw.pid, "port": st.gateway_port})

    async def _probe(self, st: DeploymentState) -> None:
        async def one(r: ReplicaProc) -> None:
            ok = await self._get_ok(r.url + "/v2/health/ready")
            r.healthy = ok
            if ok and r.state == "starting":
                r.state = "ready"
                st.good_versions.add(r.version)
                st.start_failures[r.version] = 0
                await self._event("replica.ready", st.name, {
                    "replica": r.id, "version": r.version, "pid": r.proc.pid, "port": r.port,
                    "seconds": round(time.monotonic() - r.started, 2)})
            elif ok and time.monotonic() - r.started > 30:
                st.crash_streak[r.version] = 0  # stable for a while: reset the backoff

        checks = [one(r) for r in st.replicas.values() if r.state != "draining"]
        if st.gateway is not None:
            checks.append(self._probe_gateway(st))
        await asyncio.gather(*checks)

    async def _probe_gateway(self, st: DeploymentState) -> None:
        live = await self._get_ok(f"http://127.0.0.1:{st.gateway_port}/v2/health/live")
        if live and not st.gateway_live:
            st.gateway_failures = 0
            await self._event("gateway.ready", st.name, {"port": st.gateway_port})
        st.gateway_live = live

    def _start_missing(self, st: DeploymentState, spec: DeploymentSpec) -> None:
        now = time.monotonic()
        for version, wanted in spec.versions().items():
            active = [r for r in st.replicas.values()
                      if version in (r.version, r.swapping) and r.state in ("starting", "ready")]
            if len(active) >= wanted or now < st.next_start.get(version, 0.0):
                continue
            for _ in range(wanted - len(active)):
                st.seq += 1
                rid = f"{st.name}-v{version}-{st.seq}"
                port = free_port()
                proc = spawn("stratum.serve", [
                    "--model", f"{spec.model}@{version}", "--port", str(port),
                    "--name", st.name], self._env, self._logs / st.name / f"{rid}.log")
                st.replicas[rid] = ReplicaProc(rid, version, port, proc)
                self._event_soon("replica.started", st.name, {
                    "replica": rid, "version": version, "pid": proc.pid, "port": port})

    def _swap_stale(self, st: DeploymentState, spec: DeploymentSpec) -> None:
        """A deployment that follows an alias moves in place: each ready replica of an
        older version loads the new one beside it and switches when warm (no new
        process, no request lost); traffic stays on the old version until it has."""
        if time.monotonic() < st.next_start.get(spec.version, 0.0):
            return
        wanted = spec.versions()
        for r in st.replicas.values():
            if r.state == "ready" and r.swapping is None and r.version not in wanted:
                r.swapping = spec.version
                task = asyncio.create_task(self._swap(st, r, spec.version))
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    async def _swap(self, st: DeploymentState, r: ReplicaProc, version: int) -> None:
        t0 = time.monotonic()
        try:
            resp = await self.http.post(r.url + "/admin/swap", json={"ref": str(version)},
                                        timeout=self.cfg.ready_timeout_s)
            ok, detail = resp.status_code == 200, resp.text[-600:]
        except httpx.HTTPError as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        r.swapping = None
        info = {"replica": r.id, "from": r.version, "to": version,
                "seconds": round(time.monotonic() - t0, 2)}
        if ok:
            r.version = version
            st.good_versions.add(version)
            await self._event("replica.swapped", st.name, info)
        else:
            st.start_failures[version] += 1
            st.next_start[version] = time.monotonic() + self._backoff(
                st.start_failures[version])
            st.last_error = {"generation": st.generation, "version": version,
                             "message": f"replica {r.id} could not swap to v{version}: "
                                        f"{detail}"}
            await self._event("replica.swap_failed", st.name, {**info, "error": detail})
        self.wake.set()

    def _ensure_gateway(self, st: DeploymentState, spec: DeploymentSpec) -> None:
        if st.gateway is not None and st.gateway_port != spec.port:
            st.gateway.terminate()  # moved port: the new one starts once this one is reaped
            return
        if st.gateway is not None or time.monotonic() < st.next_start.get("gateway", 0.0):
            return
        host = self.settings.gateway.host
        st.gateway = spawn("stratum.gateway", ["--host", host, "--port", str(spec.port),
                                               "--name", st.name],
                           self._env, self._logs / st.name / "gateway.log")
        st.gateway_port, st.gateway_live, st.pushed_etag = spec.port, False, None
        self._event_soon("gateway.started", st.name, {"pid": st.gateway.pid, "port": spec.port})

    def _retire(self, st: DeploymentState, r: ReplicaProc, drain: bool) -> None:
        """Drain (ask the replica to finish what it has), then SIGTERM, then SIGKILL."""
        if r.state == "draining":
            return
        r.state = "draining"
        self._event_soon("replica.draining", st.name, {"replica": r.id, "version": r.version})

        async def stop() -> None:
            if drain:
                try:
                    await self.http.post(r.url + "/admin/drain",
                                         timeout=self.settings.serve.drain_timeout_s)
                except httpx.HTTPError:
                    pass
            r.proc.terminate()
            deadline = time.monotonic() + self.settings.serve.drain_timeout_s + 5
            while r.proc.alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if r.proc.alive():
                r.proc.kill()

        task = asyncio.create_task(stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _give_up_failed(self, st: DeploymentState, spec: DeploymentSpec) -> bool:
        """A version that never got ready after ``start_attempts`` starts: revert the wanted
        state to what still serves (or, on a first deploy, stop trying)."""
        for version in spec.versions():
            if version in st.good_versions or \
                    st.start_failures[version] < self.cfg.start_attempts:
                continue
            reason = (st.last_error or {}).get("message", "it never became ready")
            serving = {r.version for r in st.replicas.values() if r.state == "ready"}
            fallback = self._fallback(spec, version, serving)
            outcome = "kept serving the current version" if fallback else "gave up"
            st.last_error = {"generation": st.generation, "version": version,
                             "message": f"v{version} of {spec.model} failed to start "
                                        f"{st.start_failures[version]} times; {outcome}. "
                                        f"Last error: {reason}"}
            st.given_up.add(version)
            await self._event("deployment.update_failed", st.name, st.last_error)
            if fallback is not None:
                await asyncio.to_thread(self.meta.put_deployment, st.name,
                                        fallback.model_dump(mode="json"))
                self.wake.set()
            else:
                st.next_start[version] = float("inf")
            await self._observe(st, spec, converged=False)
            return fallback is not None
        return False

    @staticmethod
    def _fallback(spec: DeploymentSpec, bad: int, serving: set[int]) -> DeploymentSpec | None:
        if spec.canary is not None and spec.canary.version == bad:
            return spec.model_copy(update={"canary": None})
        if spec.shadow is not None and spec.shadow.version == bad:
            return spec.model_copy(update={"shadow": None})
        prev = spec.previous
        if prev is not None and prev.version in serving:
            return spec.model_copy(update={"ref": prev.ref, "version": prev.version,
                                            "previous": None, "canary": None})
        return None

    # -- helpers ---------------------------------------------------------------------------
    def _backoff(self, n: int) -> float:
        return float(min(self.cfg.restart_backoff_max_s,
                         self.cfg.restart_backoff_s * 2 ** max(0, n - 1)))

    async def _get_ok(self, url: str) -> bool:
        try:
            return (await self.http.get(url, timeout=0.5)).status_code == 200
        except httpx.HTTPError:
            return False

    async def _push(self, st: DeploymentState, body: str) -> bool:
        try:
            r = await self.http.put(
                f"http://127.0.0.1:{st.gateway_port}/admin/routes", content=body,
                headers={"content-type": "application/json", "x-stratum-admin-token": self.token})
        except httpx.HTTPError as exc:
            log.warning("could not push routes to %s: %s", st.name, exc)
            return False
        if r.status_code != 200:
            log.warning("gateway of %s refused routes: %s %s", st.name, r.status_code, r.text)
        return r.status_code == 200

    async def _observe(self, st: DeploymentState, spec: DeploymentSpec, converged: bool) -> bool:
        wanted = spec.versions()
        ready = Counter(r.version for r in st.replicas.values() if r.state == "ready")
        settled = converged and all(ready[v] >= n for v, n in wanted.items()) and all(
            r.version in wanted and r.state == "ready" for r in st.replicas.values())
        given_up = any(st.next_start.get(v) == float("inf") for v in wanted)
        serving = converged and st.gateway_live and bool(ready)
        if settled and st.gateway_live:
            status = "ready"
        elif given_up and not ready:
            status = "failed"
        elif not serving:
            status = "starting"
        elif any(r.version not in wanted for r in st.replicas.values()):
            status = "updating"
        else:
            status = "degraded"
        doc = {
            "generation": st.generation, "status": status,
            "gateway": {"port": st.gateway_port, "pid": st.gateway.pid if st.gateway else None,
                        "live": st.gateway_live,
                        "url": f"http://{self.settings.gateway.host}:{st.gateway_port}"},
            "replicas": [{"id": r.id, "version": r.version, "pid": r.proc.pid, "port": r.port,
                          "url": r.url, "state": r.state, "healthy": r.healthy}
                         for r in st.replicas.values()],
            "traffic": st.traffic, "last_error": st.last_error,
        }
        if doc != st.last_observed:
            st.last_observed = doc
            await asyncio.to_thread(self.meta.observe_deployment, st.name, status, doc)
        return status not in ("ready", "failed")

    async def _event(self, kind: str, subject: str, payload: dict[str, Any]) -> None:
        log.info("%s %s %s", kind, subject, payload)
        await asyncio.to_thread(self.meta.add_event, kind, subject, payload)

    def _event_soon(self, kind: str, subject: str, payload: dict[str, Any]) -> None:
        task = asyncio.create_task(self._event(kind, subject, payload))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop every process this supervisor runs (gateways first) and wait for them."""
        procs = [st.gateway for st in self.states.values() if st.gateway is not None]
        for p in procs:
            p.terminate()
        replicas = [r.proc for st in self.states.values() for r in st.replicas.values()]
        for p in replicas:
            p.terminate()
        deadline = time.monotonic() + grace
        while any(p.alive() for p in procs + replicas) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for p in procs + replicas:
            if p.alive():
                p.kill()
        await self.http.aclose()
