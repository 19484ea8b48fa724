"""The supervisor: one reconcile loop from the deployments wanted (in the store) to the
processes running, in the manner of Ray Serve's controller.

Every tick, for every deployment, it: reaps exited processes (a crash schedules a restart
with exponential backoff), probes starting replicas until ready, starts the gateway, computes
the routing table from the *ready* replicas and PUTs it to the gateways, drains and stops a
replica only once they acknowledged a table without it, then starts what is missing. A
rolling update, a scale, a canary and a crash recovery are the same loop: nothing stops
before its replacement serves and the gateway moved traffic away from it.

A version whose replicas fail to start ``start_attempts`` times is given up (the wanted
state reverts to the version serving). What to do is decided in ``reconcile``; this does
it. Each deployment is reconciled on its own: one that raises is reported
(``deployment.reconcile_failed``, ``last_error``) and the others go on.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from stratum.config import Settings
from stratum.control import procs
from stratum.control.adopt import adopt
from stratum.control.follow import follow_aliases
from stratum.control.metrics import ControlMetrics
from stratum.control.placements import Placements, replica_job
from stratum.control.procs import Process, Spawn
from stratum.control.reconcile import Event, Reconciler, Stop
from stratum.control.remote import Remote
from stratum.control.routing import compute_routes
from stratum.control.sharing import on_port, prune_parts
from stratum.control.spec import DeploymentSpec, load_spec
from stratum.control.state import DeploymentState, Gateway, Replica, observed, settling
from stratum.security.tls import client_context
from stratum.security.tokens import REPLICA_SECRET_ENV, replica_secret
from stratum.store.metadata import MetadataStore
from stratum.store.runtime import RuntimeStore

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, settings: Settings, meta: MetadataStore, *,
                 clock: Callable[[], float] = time.monotonic, spawn: Spawn = procs.spawn,
                 free_port: Callable[[], int] = procs.free_port,
                 http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.cfg = settings.control
        self.meta = meta
        self.rec = Reconciler(self.cfg, clock)
        self.states: dict[str, DeploymentState] = {}
        self.procs: dict[str, Process] = {}  # by replica id
        self.gateways: dict[tuple[str, int], Process] = {}  # by (deployment, slot)
        self._stored: dict[str, str] = {}  # deployment → etag of the routes in the store
        self.runtime = RuntimeStore(meta)  # secrets and routes, for whoever leads next
        # client_tls: the CA https replicas and gateways are checked against, and the
        # certificate replicas under mutual TLS ask for.
        self.remote = Remote(http or httpx.AsyncClient(
            timeout=2.0, verify=client_context(settings.client_tls)))
        self._spawn, self._free_port = spawn, free_port  # gateways; replicas: placements
        self.placements = Placements(settings, spawn, free_port)  # by a spec's backend
        self._env = settings.child_env()  # replicas get their secret, gateways the token
        self._logs = settings.home.expanduser().resolve() / "logs"
        self._tasks: set[asyncio.Task[None]] = set()  # swaps, stops, events under way
        self._errors: dict[str, str] = {}  # deployment → the failure last reported
        self.wake = asyncio.Event()
        self.metrics = ControlMetrics()  # stratum_control_*, served on /metrics

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        await self.adopt()
        while True:
            try:
                busy = await self.metrics.timed(self.tick())
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
        failed: dict[str, Exception] = {}
        rows = {d.name: d for d in await asyncio.to_thread(self.meta.deployments)}
        given_up = {name: st.given_up for name, st in self.states.items()}
        if await asyncio.to_thread(follow_aliases, self.meta, rows, given_up, failed):
            rows = {d.name: d for d in await asyncio.to_thread(self.meta.deployments)}
        for name, row in rows.items():
            st = self.states.get(name)
            if st is not None and row.generation == st.generation:
                continue
            try:
                spec = load_spec(row.spec)
            except Exception as exc:  # keep what it had; the others go on
                failed.setdefault(name, exc)
                continue
            if st is None:
                st = self.states[name] = DeploymentState(name)
                known = await asyncio.to_thread(self.runtime.runtime, name)
                st.gateway_token = (known.gateway_token if known and known.gateway_token
                                    else secrets.token_urlsafe(24))
            self.rec.wanted(st, spec, row.generation)
            st.secret = replica_secret()  # each generation's replicas get their own
            await asyncio.to_thread(self.runtime.save_secrets, name, row.generation,
                                    st.secret, st.gateway_token)
        for name, st in list(self.states.items()):
            if name not in rows:
                st.spec = None
        results = await asyncio.gather(*(self._reconcile_guarded(st, failed)
                                         for st in self.states.values()))
        await prune_parts(self.states, self.remote)
        for name, error in failed.items():
            await self._report(name, error)
        self._errors = {n: msg for n, msg in self._errors.items() if n in failed}
        for name, st in list(self.states.items()):
            if st.finished:
                del self.states[name]
                await asyncio.to_thread(self.runtime.drop, name)
                await self._record(name, Event("deployment.stopped", {}))
        return any(results)

    async def _reconcile_guarded(self, st: DeploymentState,
                                 failed: dict[str, Exception]) -> bool:
        try:
            return await self._reconcile(st)
        except Exception as exc:
            failed.setdefault(st.name, exc)
            return False  # as for a failed tick: no quick retry of what just raised

    async def _reconcile(self, st: DeploymentState) -> bool:
        await self._reap(st)
        await self._probe(st)
        spec = st.spec
        if spec is None:  # undeployed: gateways first, so clients stop arriving
            for slot in st.gateways:
                self.gateways[st.name, slot].terminate()
            self._stop(st, self.rec.to_stop(st, None, None, set()))
            return True
        give_up = self.rec.give_up(st, spec)
        if give_up is not None:
            await self._record(st.name, give_up.event)
            if give_up.fallback is not None:
                await asyncio.to_thread(self.meta.put_deployment, st.name,
                                        give_up.fallback.model_dump(mode="json"))
                self.wake.set()
            await self._observe(st, spec, converged=False)
            if give_up.fallback is not None:
                return True  # the reverted spec is the next generation; this one is done
        for swap in self.rec.to_swap(st, spec):
            self._background(self._swap(st, swap.replica, swap.version))
        self._ensure_gateway(st, spec)
        routes, traffic, serving = compute_routes(st.name, spec, st.replicas.values())
        if routes is not None and self._stored.get(st.name) != routes.etag():
            # In the store first: a gateway that starts or restarts from now on reads it.
            await asyncio.to_thread(self.runtime.save_routes, st.name, routes.etag(),
                                    routes.model_dump(mode="json"), spec.port)
            self._stored[st.name] = routes.etag()
        around = on_port(self.states.values(), spec.port)  # other deployments' too
        tokens = {id(g): o.gateway_token for o, g in around}
        sharing = [g for o, g in around if o is not st]
        if routes is not None:
            body = routes.model_dump_json()
            for gw in self.rec.to_push(st, routes, sharing):
                if await self.remote.push_routes(st.name, gw.admin_url, body,
                                                 tokens[id(gw)]):
                    await self._record(st.name, self.rec.pushed(st, gw, routes, traffic))
        self._stop(st, self.rec.to_stop(st, spec, routes, serving, sharing))
        await self._start_missing(st, spec)  # last: a Ray start may wait for room a stop frees
        return await self._observe(st, spec, self.rec.acknowledged(st, routes, sharing))

    async def _report(self, name: str, exc: Exception) -> None:
        """Log a deployment's failed reconcile; record it once while it keeps failing."""
        log.error("reconcile of deployment %s failed", name, exc_info=exc)
        message = f"reconcile failed: {type(exc).__name__}: {exc}"[:1000]
        if self._errors.get(name) == message:
            return
        self._errors[name] = message
        st = self.states.get(name)
        error = {"generation": st.generation if st else 0, "message": message}
        try:
            await self._record(name, Event("deployment.reconcile_failed", error))
            if st is not None and st.spec is not None:
                # It may fail before observing: report it on what was last observed.
                st.last_error = error
                _, now = observed(st, st.spec, False, self.settings.gateway.host,
                                  self.settings.gateway.tls.scheme)
                doc = {**(st.last_observed or now), "last_error": error}
                st.last_observed = doc
                await asyncio.to_thread(self.meta.observe_deployment, name, doc["status"], doc)
        except Exception:
            log.exception("could not record the failed reconcile of %s", name)

    async def adopt(self) -> None:
        """Take over the replicas and gateways a previous control plane left running
        (``control.adopt``), before the first tick would start new ones beside them."""
        for row in await asyncio.to_thread(self.meta.deployments):
            spec = load_spec(row.spec)
            if spec is None or row.name in self.states:
                continue
            known = await asyncio.to_thread(self.runtime.runtime, row.name)
            if known is None or not known.secret:
                continue  # never reconciled: the first tick starts it
            st = self.states[row.name] = DeploymentState(row.name)
            # The generation its processes were started for: if the wanted state changed
            # meanwhile, the first tick sees a new generation and rolls them onto it.
            self.rec.wanted(st, spec, known.generation)
            st.secret, st.gateway_token = known.secret, known.gateway_token
            place = self.placements.of(spec.backend)
            found = adopt(st, row.observed or {}, known, self._logs, self.rec.clock(), place.adopt)
            self.procs.update(found.replicas)
            for slot, proc in found.gateways.items():
                self.gateways[row.name, slot] = proc
            for running in [*found.replicas.values(), *found.gateways.values()]:
                place.watch(running, self.wake.set)
            # Not marked stored: the first tick writes the table again with its port.
            await self._record(row.name, Event("deployment.adopted", {
                "replicas": sorted(p.pid for p in found.replicas.values()),
                "gateways": sorted(p.pid for p in found.gateways.values())}))

    # -- processes -------------------------------------------------------------------------
    async def _reap(self, st: DeploymentState) -> None:
        for r in list(st.replicas.values()):
            proc = self.procs[r.id]
            if proc.alive():
                if self.rec.past_ready_deadline(r):
                    proc.kill()  # counted as a failed start when reaped
                continue
            del self.procs[r.id]
            tail = proc.log_tail() if r.state == "starting" else ""  # why a start failed
            await self._record(st.name, self.rec.replica_exited(st, r, proc.returncode, tail))
        for gw in list(st.gateways.values()):
            proc = self.gateways[st.name, gw.slot]
            if not proc.alive():
                del self.gateways[st.name, gw.slot]
                await self._record(st.name, self.rec.gateway_exited(st, gw, proc.log_tail()))

    async def _probe(self, st: DeploymentState) -> None:
        async def one(r: Replica) -> None:
            ok = await self.remote.ok(r.url + "/v2/health/ready")
            await self._record(st.name, self.rec.probed(st, r, ok))

        async def gateway(gw: Gateway) -> None:
            live = await self.remote.ok(gw.admin_url + "/v2/health/live")
            await self._record(st.name, self.rec.gateway_probed(st, gw, live))

        checks = [one(r) for r in st.replicas.values() if r.state != "draining"]
        checks += [gateway(gw) for gw in st.gateways.values()]
        await asyncio.gather(*checks)

    async def _start_missing(self, st: DeploymentState, spec: DeploymentSpec) -> None:
        place, starts = self.placements.of(spec.backend), self.rec.to_start(st, spec)
        env = {**self._env, REPLICA_SECRET_ENV: st.secret}  # not in argv: `ps` shows argv
        placed = await asyncio.gather(*(place.start(replica_job(
            st.name, s.id, f"{spec.model}@{s.version}", env, self._logs, spec)) for s in starts))
        for start, p in zip(starts, placed, strict=True):
            self.procs[start.id] = p.proc
            place.watch(p.proc, self.wake.set)
            self._record_soon(st.name, self.rec.started(st, start, p.port, p.proc.pid, st.secret,
                                                        self.settings.serve.tls.scheme, p.host))

    async def _swap(self, st: DeploymentState, r: Replica, version: int) -> None:
        t0 = time.monotonic()
        ok, detail = await self.remote.swap(r.url, r.secret, version, self.cfg.ready_timeout_s)
        await self._record(st.name, self.rec.swap_done(st, r, version, ok, detail,
                                                       time.monotonic() - t0))
        self.wake.set()

    def _ensure_gateway(self, st: DeploymentState, spec: DeploymentSpec) -> None:
        start, stop = self.rec.gateway_actions(st, spec)
        for gw in stop:
            self.gateways[st.name, gw.slot].terminate()
        for slot in start:
            # All share the public port (SO_REUSEPORT); each has its own admin port.
            admin_port = self._free_port()
            proc = self._spawn("stratum.gateway", [
                "--host", self.settings.gateway.host, "--port", str(spec.port), "--reuse-port",
                "--admin-port", str(admin_port), "--name", st.name],
                {**self._env, "STRATUM_GATEWAY_TOKEN": st.gateway_token},
                self._logs / st.name / f"gateway-{slot}.log")
            self.gateways[st.name, slot] = proc
            procs.watch_exit(proc.pid, self.wake.set)
            self._record_soon(st.name, self.rec.gateway_started(
                st, slot, spec.port, admin_port, proc.pid, self.settings.gateway.tls.scheme))

    def _stop(self, st: DeploymentState, stops: list[Stop]) -> None:
        """Drain (ask the replica to finish what it has), then SIGTERM, then SIGKILL."""
        for stop in stops:
            r, drain = stop.replica, stop.drain
            if not self.rec.retiring(r):
                continue
            self._record_soon(st.name, Event("replica.draining",
                                             {"replica": r.id, "version": r.version}))
            self._background(self._terminate(r, self.procs[r.id], drain))

    async def _terminate(self, r: Replica, proc: Process, drain: bool) -> None:
        grace = self.settings.serve.drain_timeout_s
        if drain:
            await self.remote.drain(r.url, r.secret, grace)
        await procs.stop([proc], grace + 5)

    # -- the store -------------------------------------------------------------------------
    async def _observe(self, st: DeploymentState, spec: DeploymentSpec, converged: bool) -> bool:
        status, doc = observed(st, spec, converged, self.settings.gateway.host,
                               self.settings.gateway.tls.scheme)
        if doc != st.last_observed:
            st.last_observed = doc
            await asyncio.to_thread(self.meta.observe_deployment, st.name, status, doc)
        return settling(status)

    async def _record(self, subject: str, event: Event | None) -> None:
        if event is not None:
            self.metrics.note(event.kind, subject, event.payload)  # logged and counted
            await asyncio.to_thread(self.meta.add_event, event.kind, subject, event.payload)

    def _record_soon(self, subject: str, event: Event) -> None:
        self._background(self._record(subject, event))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # the loop keeps only weak references to its tasks
        task.add_done_callback(self._tasks.discard)

    async def forget(self) -> None:
        """Let go of everything without stopping it (this instance stopped leading; the
        next leader adopts the processes): no task of ours may act on them any more."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.states.clear()
        self.procs.clear()
        self.gateways.clear()
        self._stored.clear()
        self._errors.clear()

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop every process this supervisor runs (gateways first) and wait for them."""
        await procs.stop([*self.gateways.values(), *self.procs.values()], grace)
        await self.remote.aclose()
