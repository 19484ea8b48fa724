"""The replica's ASGI app: OIP v2 + the plain predict route + admin + /metrics.

``Replica`` serves one model (one version at a time, hot-swappable). It holds the state
(the current slot through the ``Swapper``, draining and in-flight counts, the ``Intake``)
and speaks ASGI: lifespan start-up and shutdown, and for each request the route lookup,
the bounded body read and the response with ``x-model-version`` and ``x-request-id``.
Every ``StratumError`` becomes its status with ``to_dict()`` as JSON; bad input is always
a 4xx. The handlers live in ``routes`` (inference, health, metadata, metrics, feedback)
and ``admin`` (info, swap, drain); served inputs and feedback go through ``intake``.
Other work can add routes with ``replica.add_route(method, template, handler)``.

With a ``secret`` (the deployment secret the supervisor hands it), every route but the
two health probes, ``/metrics`` and ``/openapi.json`` answers 401 unless the request
carries it in ``x-stratum-replica-secret``: a replica trusts only its gateway and its
control plane, not whoever finds its port (reading its counters needs no trust, and
Prometheus cannot know a secret that every generation rotates).
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import MethodType
from typing import Any

import orjson

from stratum.asgi import JSON, Handler, Request, Response, Router, read_body
from stratum.config import Settings
from stratum.errors import AuthError, NotFoundError, StratumError
from stratum.monitor.tracing import tracer_for
from stratum.security.tokens import REPLICA_SECRET_HEADER
from stratum.serve import admin, openapi, routes
from stratum.serve.intake import Intake
from stratum.serve.metrics import ReplicaMetrics
from stratum.serve.swap import ModelSlot, Swapper
from stratum.serve.traces import CaptureTraces, end_request, start_request
from stratum.store import Store
from stratum.store.audit import AuditLog, Auditor

log = logging.getLogger(__name__)

_ID_MAX = 128
# The probes, the counters and the API document (static, no secrets in it) need no secret.
_OPEN = frozenset(("/v2/health/live", "/v2/health/ready", "/openapi.json", "/metrics"))


class Replica:
    """ASGI app serving ``model_name``; ``deployment`` is accepted as an alias in paths."""

    def __init__(self, settings: Settings, store: Store, model_name: str,
                 deployment: str | None = None, *, secret: str | None = None,
                 replica_id: str | None = None) -> None:
        self.settings = settings
        self._secret = secret.encode("latin-1") if secret else None
        self.store = store
        self.model_name = model_name
        self.names = {model_name, deployment or model_name}
        self.deployment = deployment or model_name
        self.replica_id = replica_id
        self.metrics = ReplicaMetrics(model_name)
        self.tracer = tracer_for(settings.monitor, "replica")  # None: tracing off
        self.executor = ThreadPoolExecutor(1, "forward", initializer=_init_forward_thread,
                                           initargs=(settings.serve.runtime_threads,))
        self.swapper = Swapper(store, settings, self.executor, self.metrics, model_name)
        self.draining = False
        self.inflight = 0
        self._limit = settings.serve.max_body_bytes
        self._pending_slot: ModelSlot | None = None
        self.intake = Intake(settings, store.meta, model_name,
                             CaptureTraces(self.tracer) if self.tracer else None)
        # Who can call /admin/swap and /admin/drain: the holder of the deployment secret.
        self.admin_actor = "supervisor" if secret else "anonymous (no replica secret)"
        self.audit = Auditor("replica", AuditLog(store.meta))
        self.capture = self.intake.capture  # here too: the inference routes read it per request
        self.router = Router()
        self._add_routes()

    # -- lifecycle ------------------------------------------------------------------------
    def load(self, ref: str | None) -> None:
        """Load the first version (blocking, before the server starts)."""
        self._pending_slot = self.swapper.load(ref)

    @property
    def ready(self) -> bool:
        return self.swapper.current is not None and not self.draining

    async def startup(self) -> None:
        feature_names = None
        if self._pending_slot is not None:
            feature_names = self._pending_slot.spec.feature_names
            self.swapper.install(self._pending_slot)
            self._pending_slot = None
        self.intake.start(feature_names)

    async def shutdown(self) -> None:
        self.intake.stop()
        await self.swapper.close()
        self.executor.shutdown(wait=True)
        await self.intake.close()

    def add_route(self, method: str, template: str, handler: Handler) -> None:
        """Register an extra route; ``handler(Request) -> Response`` may raise StratumError."""
        self.router.add(method, template, handler)

    def _add_routes(self) -> None:
        # Hot routes first: a cold lookup tries templates in order.
        table = (
            ("POST", "/v2/models/{name}/infer", routes.infer),
            ("POST", "/v1/models/{name}:predict", routes.predict),
            ("POST", "/v2/models/{name}/versions/{version}/infer", routes.infer),
            ("GET", "/v2/health/live", routes.live),
            ("GET", "/v2/health/ready", routes.ready),
            ("GET", "/v2", routes.server_metadata),
            ("GET", "/v2/models/{name}", routes.model_metadata),
            ("GET", "/v2/models/{name}/versions/{version}", routes.model_metadata),
            ("GET", "/v2/models/{name}/ready", routes.model_ready),
            ("GET", "/v2/models/{name}/versions/{version}/ready", routes.model_ready),
            ("GET", "/metrics", routes.metrics),
            ("GET", "/admin/info", admin.info),
            ("POST", "/admin/swap", admin.swap),
            ("POST", "/admin/drain", admin.drain),
            ("POST", "/v1/models/{name}/feedback", routes.feedback),
            ("GET", "/openapi.json", openapi.openapi),
        )
        for method, template, handler in table:
            # A bound method, not a partial or a closure: no extra call layer per request.
            self.router.add(method, template, MethodType(handler, self))

    # -- ASGI -----------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        start = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id")
        if not rid or len(rid) > _ID_MAX:
            rid = uuid.uuid4().hex
        method, path = scope["method"], scope["path"]
        label = "unmatched"
        span = None if self.tracer is None else start_request(
            self.tracer, headers, rid, path, self.deployment, self.replica_id)
        try:
            if self._secret is not None and path not in _OPEN and not hmac.compare_digest(
                    headers.get(REPLICA_SECRET_HEADER, "").encode("latin-1"), self._secret):
                if path.startswith("/admin/") and method != "GET":  # audited, refused
                    await admin.refused(self, method, path, scope.get("client"))
                raise AuthError("this replica answers only its gateway and control plane",
                                hint="send requests through the deployment's gateway")
            found = self.router.match(method, path)
            if found is None:
                raise NotFoundError(f"no route {method} {path}",
                                    hint=f"this replica serves /v2/models/{self.model_name}")
            route, params = found
            label = route.template
            body = (await read_body(receive, self._limit, headers.get("content-length"))
                    if route.reads_body else b"")
            resp = await route.handler(Request(method, path, params, headers, body, rid,
                                               scope.get("client")))
        except StratumError as exc:
            resp = Response(exc.http_status, orjson.dumps(exc.to_dict()))
        except Exception:  # a bug, not bad input: log it, answer 500
            log.exception("unhandled error on %s %s (request %s)", method, path, rid,
                          extra={"request_id": rid})
            resp = Response(500, b'{"error":"InternalError","message":"see the replica log"}')
        version = resp.version
        if version is None and self.swapper.current is not None:
            version = self.swapper.current.version
        out_headers = [
            (b"content-type", resp.content_type),
            (b"content-length", str(len(resp.body)).encode()),
            (b"x-request-id", rid.encode("latin-1")),
            (b"x-model-version", str(version).encode()),
            *resp.headers,
        ]
        if span is not None:  # before the answer leaves, so it ends inside the caller's span
            end_request(span, label, resp.status, version)
        await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
        await send({"type": "http.response.body", "body": resp.body})
        self.metrics.observe(label, resp.status, time.perf_counter() - start)


def _init_forward_thread(threads: int | None) -> None:
    # Intra-op thread counts are per calling thread in torch: set them where forward runs.
    import sys

    if threads and "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)


__all__ = ["JSON", "Replica"]
