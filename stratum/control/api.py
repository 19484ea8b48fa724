"""The control plane's admin HTTP API (what ``stratum deploy/undeploy/rollback/scale``
talk to), with the supervisor running in the same event loop.

``POST /deployments`` writes the wanted state; the supervisor converges to it. Every
answer is JSON; a ``StratumError`` keeps its status and message. Every route but
``/health`` needs a key with the ``admin`` scope, whatever ``gateway.require_auth`` says
(that setting is about predict and feedback): the home's admin token (``{home}/admin.token``,
made here on first start, which the CLI sends by default) or one from ``stratum keys
create NAME --scope admin``. Every write, refused ones included, goes to the audit log
(``control.audit``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from stratum.config import Settings
from stratum.control.apidocs import add_docs
from stratum.control.audit import AuditTrail, Note, audit_note, spec_change
from stratum.control.autoscale import Scaling
from stratum.control.autoscaler import Autoscaler
from stratum.control.leading import Role, StandbyRedirect
from stratum.control.lease import Lease, Unguarded
from stratum.control.observe import Alerting
from stratum.control.observe import add_routes as add_observe_routes
from stratum.control.openapi import describe_api
from stratum.control.placement import placed_spec
from stratum.control.procs import port_free
from stratum.control.retention import AuditRetention
from stratum.control.spec import (
    DeploymentSpec,
    autoscale_notice,
    build_spec,
    check_shared_port,
    load_spec,
    pin_notice,
    rolled_back,
)
from stratum.control.supervisor import Supervisor
from stratum.errors import ConflictError, NotFoundError, StratumError
from stratum.gateway.balancer import POLICIES
from stratum.gateway.traffic import PoolLimits
from stratum.security.access import KeyChecker, presented_key
from stratum.security.tokens import ADMIN_TOKEN_FILE, ensure_admin_token
from stratum.store import Store
from stratum.store import models as m
from stratum.store.audit import AuditLog, Auditor
from stratum.store.runtime import RuntimeStore

log = logging.getLogger(__name__)
MAX_EVENTS = 1000  # per GET /events


class DeployRequest(BaseModel):
    model: str = Field(description="NAME@VERSION or NAME@ALIAS")
    name: str | None = Field(None, description="deployment name; default: the model name")
    replicas: int | None = Field(None, ge=1, le=64)
    gateways: int | None = Field(None, ge=1, le=8, description="gateway processes sharing "
                                 "the port (SO_REUSEPORT)")
    port: int | None = Field(None, ge=1, le=65_535)
    canary: str | None = Field(None, description="NAME@VERSION:PERCENT")
    shadow: str | None = Field(None, description="NAME@VERSION")
    policy: str | None = None
    follow: bool | None = Field(None, description="track the alias in `model` as it moves")
    # Autoscaling: both bounds turn it on; an explicit `replicas` alone turns it off.
    min_replicas: int | None = Field(None, ge=0, le=64, description="autoscale from this "
                                     "many replicas (0: scale to zero when idle)")
    max_replicas: int | None = Field(None, ge=1, le=64, description="autoscale up to this many")
    target_inflight: float | None = Field(None, gt=0, le=10_000, description="requests in "
                                          "flight per replica the autoscaler aims at")
    scale_down_cooldown_s: float | None = Field(None, ge=0, le=86_400, description="seconds "
                                                "of lower load before scaling down")
    # This deployment's own admission on the gateways of its port (None: keep the current).
    require_auth: bool | None = Field(None, description="need an API key for this deployment "
                                      "(false: none, even where the gateway asks for one)")
    rate_limit_per_s: float | None = Field(None, gt=0, le=1e6, description="requests per "
                                           "second per key for this deployment")
    rate_limit_burst: int | None = Field(None, ge=1, le=1_000_000)
    # Where replicas run (None: as deployed, else cluster.backend) and what each asks of a
    # Ray node (None: as deployed, else cluster.replica_cpus/replica_gpus).
    backend: Literal["local", "ray"] | None = None
    cpus: float | None = Field(None, gt=0, le=1024)
    gpus: float | None = Field(None, ge=0, le=64)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str | None) -> str | None:
        if v is not None and v not in POLICIES:
            raise ValueError(f"unknown policy {v!r}; use one of {', '.join(POLICIES)}")
        return v

    def limits(self) -> PoolLimits | None:
        if self.require_auth is None and self.rate_limit_per_s is None:
            return None
        return PoolLimits(require_auth=self.require_auth,
                          rate_limit_per_s=self.rate_limit_per_s,
                          rate_limit_burst=self.rate_limit_burst)


class ScaleRequest(BaseModel):
    replicas: int = Field(ge=1, le=64)


def describe(dep: m.Deployment) -> dict[str, Any]:
    return {"name": dep.name, "generation": dep.generation, "status": dep.status,
            "spec": dep.spec, "observed": dep.observed, "updated_at": dep.updated_at.isoformat()}


def _noticed(out: dict[str, Any], current: DeploymentSpec | None,
             new: DeploymentSpec) -> dict[str, Any]:
    """``out`` with a ``notice`` when the change pinned a deployment that followed an alias
    or turned its autoscaling off."""
    notice = "; ".join(n for n in (pin_notice(current, new), autoscale_notice(current, new))
                       if n)
    return out | {"notice": notice} if notice else out


@dataclass(frozen=True)
class ControlParts:
    """What an extension of the control plane's process builds on: the app to add routes
    or mounts to, and what the API itself runs on. The interface layer composes the
    process (``python -m stratum.web`` mounts the dashboard this way), so control never
    imports it."""

    app: FastAPI
    settings: Settings
    store: Store
    supervisor: Supervisor
    keys: KeyChecker


Extension = Callable[[ControlParts], None]


def create_app(settings: Settings, on_ready: Any = None, *, lease: Lease | None = None,
               url: str = "", extensions: Sequence[Extension] = ()) -> FastAPI:
    """The API; it leads (runs the supervisor) once it holds ``lease`` (none: at once)
    and stands by until then (``control.leading``). Each of ``extensions`` is called once
    with the finished app, before it serves."""
    store = Store.open(settings)
    meta = store.meta
    sup = Supervisor(settings, meta)
    role = Role(lease or Unguarded(), RuntimeStore(meta), url, settings.control.lease_poll_s,
                acquired=lease is None or lease.held())
    keys = KeyChecker(meta, settings.gateway.auth_cache_s)
    ensure_admin_token(settings.home, meta)
    log.info("admin API: send the admin token in %s", settings.home / ADMIN_TOKEN_FILE)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []

        async def start() -> None:  # on becoming the leader
            if on_ready is not None:
                on_ready()
            tasks.append(asyncio.create_task(sup.run()))
            tasks.append(asyncio.create_task(Autoscaler(settings, meta, sup).run()))
            tasks.append(asyncio.create_task(AuditRetention(
                settings.control, AuditLog(meta), sup.metrics).run()))
            if settings.monitor.alerts:  # the alert rules, evaluated here (control.observe)
                tasks.append(asyncio.create_task(Alerting(settings, sup, meta).run()))

        async def stop() -> None:  # on losing the lease: leave everything running
            while len(tasks) > 1:
                run = tasks.pop()
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
            await sup.forget()

        tasks.append(asyncio.create_task(role.lead(start, stop)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if role.leader:  # a standby has nothing to stop
                await sup.shutdown()
            (lease or Unguarded()).release()
            store.close()

    async def admin(request: Request) -> None:
        headers = {k.encode("latin-1"): v.encode("latin-1") for k, v in request.headers.items()}
        key = presented_key(headers)
        try:
            await keys.authorize(key, "admin")
        finally:  # refused callers are recorded too, as far as they are known
            audit_note(request).actor = keys.actor(key)

    # FastAPI's own docs pages load from CDNs: ours are served from the package (apidocs).
    app = FastAPI(title="Stratum control plane", lifespan=lifespan, docs_url=None,
                  redoc_url=None, swagger_ui_oauth2_redirect_url=None)
    describe_api(app)  # the completed /openapi.json; 422s in Stratum's error shape
    add_docs(app)  # /docs: Swagger UI, self-hosted, as public as /openapi.json
    app.add_middleware(AuditTrail, auditor=Auditor("control", AuditLog(meta)))
    app.add_middleware(StandbyRedirect, role=role)  # outermost: a standby audits nothing
    guarded = [Depends(admin)]

    @app.exception_handler(StratumError)
    async def _stratum_error(_: Request, exc: StratumError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.http_status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid(), "deployments": len(sup.states),
                "role": "leader" if role.leader else "standby", "term": role.term}

    @app.get("/deployments", dependencies=guarded)
    async def deployments() -> list[dict[str, Any]]:
        return [describe(d) for d in await asyncio.to_thread(meta.deployments)]

    @app.get("/deployments/{name}", dependencies=guarded)
    async def deployment(name: str) -> dict[str, Any]:
        return describe(await asyncio.to_thread(meta.deployment, name))

    @app.post("/deployments", dependencies=guarded)
    async def deploy(req: DeployRequest, request: Request) -> dict[str, Any]:
        out = await asyncio.to_thread(_deploy, req, audit_note(request))
        sup.wake.set()  # on the loop: asyncio.Event is not thread-safe
        return out

    def _deploy(req: DeployRequest, note: Note) -> dict[str, Any]:
        name = note.target = req.name or req.model.partition("@")[0]
        existing = {d.name: d for d in meta.deployments()}
        current = load_spec(existing[name].spec) if name in existing else None
        spec = build_spec(meta, req.model, current=current, replicas=req.replicas,
                          port=req.port, default_port=settings.gateway.port,
                          canary=req.canary, shadow=req.shadow, policy=req.policy,
                          follow=req.follow, gateways=req.gateways,
                          scaling=Scaling(min_replicas=req.min_replicas,
                                          max_replicas=req.max_replicas,
                                          target_inflight=req.target_inflight,
                                          scale_down_cooldown_s=req.scale_down_cooldown_s),
                          defaults=settings.control, limits=req.limits())
        spec = placed_spec(spec, current, settings, req.backend, req.cpus, req.gpus)
        sup.placements.of(spec.backend).check(spec.cpus, spec.gpus)  # before any change
        neighbours = {o: s for o, d in existing.items() if o != name
                      and (s := load_spec(d.spec)) is not None and s.port == spec.port}
        check_shared_port(name, spec, neighbours)
        # Ours when our gateways or a neighbour's (SO_REUSEPORT) hold it already.
        ours = (current is not None and current.port == spec.port) or bool(neighbours)
        if not ours and not port_free(settings.gateway.host, spec.port):
            raise ConflictError(
                f"port {spec.port} on {settings.gateway.host} is busy",
                hint="stop what listens there or choose another --port")
        wanted = spec.model_dump(mode="json")
        note.detail = spec_change(existing[name].spec if name in existing else None, wanted)
        return _noticed(describe(meta.put_deployment(name, wanted)), current, spec)

    @app.delete("/deployments/{name}", dependencies=guarded)
    async def undeploy(name: str, request: Request) -> dict[str, Any]:
        def go() -> None:
            audit_note(request).detail = spec_change(meta.deployment(name).spec, None)
            meta.delete_deployment(name)
        await asyncio.to_thread(go)
        sup.wake.set()
        return {"name": name, "deleted": True}

    @app.post("/deployments/{name}/rollback", dependencies=guarded)
    async def rollback(name: str, request: Request) -> dict[str, Any]:
        def go() -> dict[str, Any]:
            spec = load_spec(meta.deployment(name).spec)
            if spec is None:
                raise NotFoundError(f"deployment {name!r} has no spec")
            new = rolled_back(spec)
            meta.add_event("deployment.rollback", name,
                           {"from": spec.version, "to": new.version})
            audit_note(request).detail = spec_change(spec.model_dump(mode="json"),
                                                     new.model_dump(mode="json"))
            return _noticed(describe(meta.put_deployment(name, new.model_dump(mode="json"))),
                            spec, new)
        out = await asyncio.to_thread(go)
        sup.wake.set()
        return out

    @app.post("/deployments/{name}/scale", dependencies=guarded)
    async def scale(name: str, req: ScaleRequest, request: Request) -> dict[str, Any]:
        def go() -> dict[str, Any]:
            spec = load_spec(meta.deployment(name).spec)
            if spec is None:
                raise NotFoundError(f"deployment {name!r} has no spec")
            # A fixed count: autoscaling, which would undo it, is turned off (and said so).
            new = spec.model_copy(update={"replicas": req.replicas, "autoscale": None})
            meta.add_event("deployment.scaled", name,
                           {"from": spec.replicas, "to": req.replicas})
            audit_note(request).detail = spec_change(spec.model_dump(mode="json"),
                                                     new.model_dump(mode="json"))
            return _noticed(describe(meta.put_deployment(name, new.model_dump(mode="json"))),
                            spec, new)
        out = await asyncio.to_thread(go)
        sup.wake.set()
        return out

    @app.get("/events", dependencies=guarded)
    async def events(subject: str | None = None,
                     # bounded: past SQLite's 64-bit LIMIT it was a 500, below 1 unbounded
                     limit: int = Query(50, ge=1, le=MAX_EVENTS)) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(meta.events, subject, None, limit)
        return [{"id": e.id, "ts": e.ts.isoformat(), "kind": e.kind, "subject": e.subject,
                 "payload": e.payload} for e in rows]

    app.state.supervisor = sup
    add_observe_routes(app, sup, role, meta, settings, url, guarded)  # /metrics, discovery
    for extend in extensions:
        extend(ControlParts(app, settings, store, sup, keys))
    return app
