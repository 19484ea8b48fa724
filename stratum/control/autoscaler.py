"""The autoscaler's effects, run by the leader beside the supervisor.

Every ``control.autoscale_interval_s``, for each autoscaled deployment, it asks each live
gateway of it (on the gateway's own admin port) what it sees (``GET /admin/routes``: per
replica the request-seconds in flight so far, the requests held while there is no
replica), turns that into one ``Load`` (``LoadReader``) and lets ``autoscale`` decide.
A new count is written as the wanted spec (a new generation, as ``stratum scale`` writes
it) only if the spec is still the one decided on, with an event ``deployment.autoscaled``
carrying the reason and the signal.
Starting, routing once ready and draining before a stop are then the reconcile loop's, as
for any scale. A gateway that does not answer gives no sample: no evidence either way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError

from stratum.config import Settings
from stratum.control.autoscale import Autoscale, Decision, Load
from stratum.control.spec import DeploymentSpec
from stratum.control.state import DeploymentState
from stratum.errors import ConflictError
from stratum.store.metadata import MetadataStore

if TYPE_CHECKING:
    from stratum.control.supervisor import Supervisor

log = logging.getLogger(__name__)


class _Replica(BaseModel):
    outstanding: int = Field(0, ge=0)
    inflight_s: float = Field(0.0, ge=0)


class _Group(BaseModel):
    replicas: list[str] = Field(default_factory=list)


class _Pool(BaseModel):
    groups: list[_Group] = Field(default_factory=list)  # a shadow's copies are not demand


class _Routes(BaseModel):
    deployments: dict[str, _Pool] = Field(default_factory=dict)


class GatewayShown(BaseModel):
    """The part of a gateway's ``GET /admin/routes`` the autoscaler reads."""

    routes: _Routes = Field(default_factory=_Routes)
    replicas: dict[str, _Replica] = Field(default_factory=dict)
    waiting: dict[str, int] = Field(default_factory=dict)


class LoadReader:
    """A deployment's load from what its gateways show. In flight: the mean since the
    gateway was read last, from each replica's running request-seconds (exact, whatever
    the load did in between: instant counts alias with the waves a closed-loop client
    makes); at a gateway's first read, or after it restarted, the count at that instant."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # deployment → gateway → (when read, request-seconds by replica URL)
        self._last: dict[str, dict[str, tuple[float, dict[str, float]]]] = {}

    def read(self, name: str, shown: Mapping[str, dict[str, Any] | None], pools: set[str],
             ready: int) -> Load | None:
        """``shown``: each gateway's document by its URL (None: it did not answer);
        ``pools``: the names the deployment's routes go by. None when none could be read."""
        now = self.clock()
        last = self._last.setdefault(name, {})
        inflight, waiting, read = 0.0, 0, False
        for gateway, raw in shown.items():
            try:
                doc = GatewayShown.model_validate(raw) if raw is not None else None
            except ValidationError:
                doc = None
            if doc is None:
                continue
            read = True
            urls = {u for p in pools if p in doc.routes.deployments
                    for g in doc.routes.deployments[p].groups for u in g.replicas
                    if u in doc.replicas}
            totals = {u: doc.replicas[u].inflight_s for u in urls}
            before = last.get(gateway)
            last[gateway] = (now, totals)
            if before is not None and now > before[0] and all(
                    v >= before[1].get(u, 0.0) for u, v in totals.items()):
                # A replica new to the table started its count after the last read.
                done = sum(v - before[1].get(u, 0.0) for u, v in totals.items())
                inflight += done / (now - before[0])
            else:
                inflight += sum(doc.replicas[u].outstanding for u in urls)
            waiting += sum(doc.waiting.get(p, 0) for p in pools)
        return Load(inflight, waiting, ready) if read else None

    def forget(self, name: str) -> None:
        self._last.pop(name, None)


class Autoscaler:
    def __init__(self, settings: Settings, meta: MetadataStore, sup: Supervisor, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = settings.control
        self.meta = meta
        self.sup = sup
        self.decisions = Autoscale(self.cfg.autoscale_window_s, clock)
        self.loads = LoadReader(clock)
        self._generations: dict[str, int] = {}  # the last seen of each deployment

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the loop must outlive any one bad tick
                log.exception("autoscale tick failed")
            await asyncio.sleep(self.cfg.autoscale_interval_s)

    async def tick(self) -> None:
        for name, st in list(self.sup.states.items()):
            spec = st.spec
            if spec is None or spec.autoscale is None:
                self.decisions.forget(name)
                self.loads.forget(name)
                self._generations.pop(name, None)
                continue
            if self._generations.get(name) != st.generation:  # a deploy, a scale, ours
                self._generations[name] = st.generation
                self.decisions.applied(name)
            load = await self._load(st, spec)
            if load is None:
                continue
            decision = self.decisions.decide(name, spec.autoscale, spec.replicas, load)
            if decision is not None:
                await self._apply(st, spec, decision)

    async def _load(self, st: DeploymentState, spec: DeploymentSpec) -> Load | None:
        urls = [g.admin_url for g in st.gateways.values() if g.live]
        shown = await asyncio.gather(*(self.sup.remote.routes_shown(u, st.gateway_token)
                                       for u in urls))
        # New replicas count once ready: the routes name only those, and so does this.
        ready = sum(1 for r in st.replicas.values()
                    if r.state == "ready" and r.version == spec.version)
        wanted = spec.versions()
        settling = any(r.state == "starting" or r.version not in wanted
                       for r in st.replicas.values())
        load = self.loads.read(st.name, dict(zip(urls, shown, strict=True)),
                               {st.name, spec.model}, ready)
        return dataclasses.replace(load, settling=settling) if load is not None else None

    async def _apply(self, st: DeploymentState, spec: DeploymentSpec,
                     decision: Decision) -> None:
        new = spec.model_copy(update={"replicas": decision.replicas})
        event = {"from": spec.replicas, "to": decision.replicas, "reason": decision.reason,
                 "signal": decision.signal}

        def write() -> None:
            self.meta.put_deployment(st.name, new.model_dump(mode="json"),
                                     if_generation=st.generation)
            self.meta.add_event("deployment.autoscaled", st.name, event)

        try:
            await asyncio.to_thread(write)
        except ConflictError:
            return  # a deploy or a scale came first: decide again on what it wants
        self.decisions.applied(st.name)
        log.info("deployment.autoscaled %s %s", st.name, event)
        self.sup.wake.set()


__all__ = ["Autoscaler", "GatewayShown", "LoadReader"]
