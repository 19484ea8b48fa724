"""The control plane's admin HTTP API (what ``stratum deploy/undeploy/rollback/scale``
talk to), with the supervisor running in the same event loop.

``POST /deployments`` writes the wanted state; the supervisor converges to it. Every
answer is JSON; a ``StratumError`` keeps its status and message. Every route but
``/health`` needs a key with the ``admin`` scope, whatever ``gateway.require_auth`` says
(that setting is about predict and feedback): the home's admin token (``{home}/admin.token``,
made here on first start, which the CLI sends by default) or one from ``stratum keys
create NAME --scope admin``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from stratum.config import Settings
from stratum.control.procs import port_free
from stratum.control.spec import build_spec, load_spec, rolled_back
from stratum.control.supervisor import Supervisor
from stratum.errors import ConflictError, NotFoundError, StratumError
from stratum.security.access import KeyChecker, presented_key
from stratum.security.tokens import ADMIN_TOKEN_FILE, ensure_admin_token
from stratum.store import Store
from stratum.store import models as m

log = logging.getLogger(__name__)


class DeployRequest(BaseModel):
    model: str = Field(description="NAME@VERSION or NAME@ALIAS")
    name: str | None = Field(None, description="deployment name; default: the model name")
    replicas: int | None = Field(None, ge=1, le=64)
    port: int | None = Field(None, ge=1, le=65_535)
    canary: str | None = Field(None, description="NAME@VERSION:PERCENT")
    shadow: str | None = Field(None, description="NAME@VERSION")
    policy: str | None = None
    follow: bool | None = Field(None, description="track the alias in `model` as it moves")


class ScaleRequest(BaseModel):
    replicas: int = Field(ge=1, le=64)


def describe(dep: m.Deployment) -> dict[str, Any]:
    return {"name": dep.name, "generation": dep.generation, "status": dep.status,
            "spec": dep.spec, "observed": dep.observed, "updated_at": dep.updated_at.isoformat()}


def create_app(settings: Settings, on_ready: Any = None) -> FastAPI:
    store = Store.open(settings)
    meta = store.meta
    sup = Supervisor(settings, meta)
    keys = KeyChecker(meta, settings.gateway.auth_cache_s)
    ensure_admin_token(settings.home, meta)
    log.info("admin API: send the admin token in %s", settings.home / ADMIN_TOKEN_FILE)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(sup.run())
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            task.cancel()
            await sup.shutdown()
            store.close()

    async def admin(request: Request) -> None:
        headers = {k.encode("latin-1"): v.encode("latin-1") for k, v in request.headers.items()}
        await keys.authorize(presented_key(headers), "admin")

    app = FastAPI(title="Stratum control plane", lifespan=lifespan)
    guarded = [Depends(admin)]

    @app.exception_handler(StratumError)
    async def _stratum_error(_: Request, exc: StratumError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.http_status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid(), "deployments": len(sup.states)}

    @app.get("/deployments", dependencies=guarded)
    async def deployments() -> list[dict[str, Any]]:
        return [describe(d) for d in await asyncio.to_thread(meta.deployments)]

    @app.get("/deployments/{name}", dependencies=guarded)
    async def deployment(name: str) -> dict[str, Any]:
        return describe(await asyncio.to_thread(meta.deployment, name))

    @app.post("/deployments", dependencies=guarded)
    async def deploy(req: DeployRequest) -> dict[str, Any]:
        out = await asyncio.to_thread(_deploy, req)
        sup.wake.set()  # on the loop: asyncio.Event is not thread-safe
        return out

    def _deploy(req: DeployRequest) -> dict[str, Any]:
        name = req.name or req.model.partition("@")[0]
        existing = {d.name: d for d in meta.deployments()}
        current = load_spec(existing[name].spec) if name in existing else None
        spec = build_spec(meta, req.model, current=current, replicas=req.replicas,
                          port=req.port, default_port=settings.gateway.port,
                          canary=req.canary, shadow=req.shadow, policy=req.policy,
                          follow=req.follow)
        for other, dep in existing.items():
            if other != name and dep.spec.get("port") == spec.port:
                raise ConflictError(f"port {spec.port} is already used by deployment {other}",
                                    hint="choose another --port")
        ours = current is not None and current.port == spec.port
        if not ours and not port_free(settings.gateway.host, spec.port):
            raise ConflictError(
                f"port {spec.port} on {settings.gateway.host} is busy",
                hint="stop what listens there or choose another --port")
        return describe(meta.put_deployment(name, spec.model_dump(mode="json")))

    @app.delete("/deployments/{name}", dependencies=guarded)
    async def undeploy(name: str) -> dict[str, Any]:
        await asyncio.to_thread(meta.delete_deployment, name)
        sup.wake.set()
        return {"name": name, "deleted": True}

    @app.post("/deployments/{name}/rollback", dependencies=guarded)
    async def rollback(name: str) -> dict[str, Any]:
        def go() -> dict[str, Any]:
            spec = load_spec(meta.deployment(name).spec)
            if spec is None:
                raise NotFoundError(f"deployment {name!r} has no spec")
            new = rolled_back(spec)
            meta.add_event("deployment.rollback", name,
                           {"from": spec.version, "to": new.version})
            return describe(meta.put_deployment(name, new.model_dump(mode="json")))
        out = await asyncio.to_thread(go)
        sup.wake.set()
        return out

    @app.post("/deployments/{name}/scale", dependencies=guarded)
    async def scale(name: str, req: ScaleRequest) -> dict[str, Any]:
        def go() -> dict[str, Any]:
            spec = load_spec(meta.deployment(name).spec)
            if spec is None:
                raise NotFoundError(f"deployment {name!r} has no spec")
            new = spec.model_copy(update={"replicas": req.replicas})
            meta.add_event("deployment.scaled", name,
                           {"from": spec.replicas, "to": req.replicas})
            return describe(meta.put_deployment(name, new.model_dump(mode="json")))
        out = await asyncio.to_thread(go)
        sup.wake.set()
        return out

    @app.get("/events", dependencies=guarded)
    async def events(subject: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(meta.events, subject, None, limit)
        return [{"id": e.id, "ts": e.ts.isoformat(), "kind": e.kind, "subject": e.subject,
                 "payload": e.payload} for e in rows]

    app.state.supervisor = sup
    return app
