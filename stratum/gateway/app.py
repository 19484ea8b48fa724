"""The gateway as a raw ASGI app: the public routes of a replica, forwarded as bytes.

Per request the hot path does: a request id, (when configured) an API-key check from a
cache and a token bucket, the body read under a size limit, a weighted group choice, a
balancer pick, one HTTP/1.1 exchange on a pooled connection, and a retry on another replica
if that failed at the connection level or with a 5xx. The body is never parsed: the
replica validates it and its 4xx passes through unchanged.

Local routes (health, metrics, the admin routing table) are ``gateway.local``; what a
request is to the gateway (``Call``) is ``gateway.call``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from collections.abc import Awaitable
from typing import Any

import orjson

from stratum.asgi import read_body
from stratum.config import Settings
from stratum.errors import (
    NoReplicaError,
    NotFoundError,
    ServingError,
    StratumError,
    UpstreamError,
)
from stratum.gateway.admin import GatewayAdmin
from stratum.gateway.auth import Admission, Buckets
from stratum.gateway.call import (
    JSON_HEADERS,
    Call,
    Receive,
    Scope,
    Send,
    model_of,
    read_call_body,
)
from stratum.gateway.health import Health
from stratum.gateway.hold import RETRY_AFTER_S, Hold, routed
from stratum.gateway.local import LocalRoutes
from stratum.gateway.metrics import GatewayMetrics
from stratum.gateway.retry import RetryBudget, should_retry
from stratum.gateway.sync import follow_routes
from stratum.gateway.traces import end_request, start_request
from stratum.gateway.traffic import Group, Pool, RoutesSpec, RouteTable, merge
from stratum.gateway.upstream import Upstream, UpstreamResponse
from stratum.monitor.tracing import tracer_for
from stratum.security.access import KeyChecker
from stratum.security.tls import client_context
from stratum.store.audit import AuditLog, Auditor
from stratum.store.metadata import MetadataStore
from stratum.store.runtime import RuntimeStore

log = logging.getLogger(__name__)

# What a replica needs of the client's headers; Inference-Header-Content-Length splits the
# Triton client's binary tensor bodies (the replica answers 400 without it).
_FORWARD = frozenset((b"content-type", b"accept", b"x-request-id", b"traceparent",
                      b"inference-header-content-length"))
# Request ids: a random per-process prefix and a counter — unique, and cheaper than uuid4.
_ID_PREFIX = os.urandom(6).hex()
_ids = itertools.count()


class Gateway:
    """``Gateway(settings, routes)`` is the ASGI callable; serve it with uvicorn."""

    def __init__(
        self, settings: Settings, routes: RoutesSpec | None = None, *,
        meta: MetadataStore | None = None, name: str | None = None,
        admin_token: str | None = None, port: int | None = None,
        parts: dict[str, RoutesSpec] | None = None,
    ) -> None:
        """``name``: the deployment that started this gateway; ``port``: its public port,
        whose deployments' tables (``parts``, then the store's) it serves."""
        g = self.cfg = settings.gateway
        self.name = name
        # What https:// replicas are verified with, and shown under mutual TLS.
        self.tls = client_context(settings.client_tls)
        # Several deployments can share this gateway (one port): a table per deployment,
        # merged into the one the hot path reads (``traffic.merge``).
        self.parts: dict[str, RoutesSpec] = {}
        self.part_etags: dict[str, str] = {}
        self.table = RouteTable(RoutesSpec(), g.policy, {}, self.tls)
        self.port = port
        self.health = Health(g.eject_after_failures, g.health_interval_s)
        self.budget = RetryBudget(g.retry_budget)
        self.metrics = GatewayMetrics()
        self.tracer = tracer_for(settings.monitor, "gateway")  # None: tracing off
        if g.require_auth and meta is None:
            raise ServingError("gateway.require_auth is on but no metadata store was given")
        # Keys are checked whenever there is a store: /admin/* always needs a credential.
        self.keys = KeyChecker(meta, g.auth_cache_s) if meta is not None else None
        # A named gateway follows its deployment's routes in the store (gateway.sync).
        self.runtime = RuntimeStore(meta) if meta is not None and name else None
        self.admission = Admission(g, self.keys, Buckets.of(
            settings, port, self.metrics.ratelimit_fallback))
        self._hash_header = g.hash_header.lower().encode()
        self._forward = _FORWARD | {self._hash_header}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shadow_inflight = 0
        self.hold = Hold(g.hold_timeout_s, g.hold_max_requests)  # scaled to zero
        self.local = LocalRoutes(self)
        self.admin = GatewayAdmin(self, self.local, self.keys, admin_token, Auditor(
            "gateway", AuditLog(meta) if meta is not None else None))
        if routes is not None:
            self.install(routes)
        for part, spec in (parts or {}).items():
            self.install(spec, part)

    # -- ASGI -----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self.start_background()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.stop_background()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def start_background(self) -> None:
        """Start the active health checks (call once, on the serving loop)."""
        task = asyncio.create_task(self.health.run(lambda: self.table.upstreams.values()))
        self._tasks.add(task)
        if self.runtime is not None and self.port is not None:
            self._tasks.add(asyncio.create_task(follow_routes(
                self, self.runtime, self.port, self.name, self.cfg.routes_poll_s)))

    async def stop_background(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for up in self.table.upstreams.values():
            up.close()
        await self.admission.buckets.aclose()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        client = scope.get("client")

        def read() -> Awaitable[bytes]:  # Content-Length is checked in _read_body
            return read_body(receive, self.cfg.max_body_bytes, None)

        call = Call(scope["method"], scope["path"], target.decode("latin-1"),
                    dict(scope["headers"]), client[0] if client else None, read,
                    client[1] if client else None)
        status, headers, body = await self.handle(call)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def handle(self, call: Call) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Answer one request: ``(status, headers, body)``; every error becomes JSON."""
        t0 = time.perf_counter()
        headers = call.headers
        rid = headers.get(b"x-request-id")
        if not rid or len(rid) > 128:
            rid = f"{_ID_PREFIX}{next(_ids):010x}".encode()
            headers[b"x-request-id"] = rid
        span = None if self.tracer is None else start_request(self.tracer, call, rid)
        try:
            status, out_headers, body = await self._dispatch(call)
        except StratumError as exc:
            status, out_headers, body = exc.http_status, JSON_HEADERS, orjson.dumps(exc.to_dict())
            if isinstance(exc, NoReplicaError):  # held past the bound: a replica is coming
                out_headers = [*JSON_HEADERS, (b"retry-after", str(RETRY_AFTER_S).encode())]
        out = list(out_headers)
        if not any(k == b"x-request-id" for k, _ in out):
            out.append((b"x-request-id", rid))
        self.metrics.observe(call.path, self.table.pools, status, time.perf_counter() - t0)
        if span is not None:
            end_request(span, status)
        return status, out, body

    async def _dispatch(self, call: Call) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        path = call.path
        if path.startswith("/admin/"):  # never forwarded: a replica's are the supervisor's
            return await self.admin.handle(call)
        local = self.local.find(call.method, path)
        if local is not None:
            return await local(call)
        model = model_of(path)
        table = self.table
        pool = table.pool(model) if model else (table.wildcard or next(
            iter(table.pools.values()), None))
        await self.admission.admit(call, pool)  # before a 404 says what is deployed
        body = await read_call_body(call, self.cfg.max_body_bytes)
        if pool is None:
            if model is None and not path.startswith(("/v1/", "/v2")):
                raise NotFoundError(f"no route {path}")
            raise NotFoundError(
                f"model {model!r} is not deployed behind this gateway",
                hint=f"deployed: {', '.join(sorted(table.pools)) or 'none'}")
        if not pool.groups[0].replicas and not routed(pool):  # scaled to zero: gateway.hold
            name = pool.name
            pool = await self.hold.until_routed(name, lambda: self.table.pools.get(name))
        headers = call.headers
        fwd = [(k, v) for k, v in headers.items() if k in self._forward]
        resp = await self._forward_with_retry(pool, call.method, call.target, fwd, body,
                                              headers.get(self._hash_header))
        if pool.shadow is not None:
            self._mirror(pool, call.method, call.target, fwd, body)
        return resp.status, resp.headers, resp.body

    # -- forwarding ------------------------------------------------------------------------
    async def _forward_with_retry(
        self, pool: Pool, method: str, target: str, fwd: list[tuple[bytes, bytes]],
        body: bytes, key: bytes | None,
    ) -> UpstreamResponse:
        group = pool.choose_group(random.random())
        tried: list[Upstream] = []
        last: UpstreamResponse | None = None
        error: str = "no replica is in the routing table"
        self.budget.on_request()
        timeout = self.cfg.upstream_timeout_s
        for attempt in range(1 + self.cfg.retries):
            up = self._pick(pool, group, tried, key)
            if up is None:
                break
            tried.append(up)
            up.begin()
            up.requests += 1
            try:
                resp = await up.request(method, target, fwd, body, timeout)
            except UpstreamError as exc:
                self.health.on_failure(up, connection_level=True)
                self.metrics.upstream_errors.labels("connection").inc()
                error = str(exc)
            else:
                if not should_retry(resp.status):
                    self.health.on_success(up)
                    return resp
                self.health.on_failure(up, connection_level=False)
                self.metrics.upstream_errors.labels(f"{resp.status}").inc()
                last = resp
            finally:
                up.end()
            if attempt < self.cfg.retries:
                if not self.budget.can_retry():
                    self.metrics.retry_refused.inc()
                    break
                self.metrics.retries.inc()
        if last is not None:
            return last
        raise ServingError(f"no replica could answer: {error}",
                           hint="see `stratum status` for replica health")

    def _pick(self, pool: Pool, group: Group, tried: list[Upstream],
              key: bytes | None) -> Upstream | None:
        cands = group.candidates(tried)
        if cands:
            return group.balancer.pick(cands, key)
        for other in pool.groups:  # the chosen version has nobody left: try the other one
            cands = other.candidates(tried)
            if cands:
                return other.balancer.pick(cands, key)
        return None

    def _mirror(self, pool: Pool, method: str, target: str, fwd: list[tuple[bytes, bytes]],
                body: bytes) -> None:
        """Fire and forget a copy to the shadow group; dropped when too many are pending."""
        group = pool.mirror()
        if group is None:
            return
        if self._shadow_inflight >= self.cfg.shadow_max_inflight:
            self.metrics.shadow.labels("dropped").inc()
            return
        cands = group.candidates(())
        if not cands:
            self.metrics.shadow.labels("dropped").inc()
            return
        up = group.balancer.pick(cands, None)
        self._shadow_inflight += 1
        task = asyncio.create_task(self._shadow_call(up, method, target, fwd, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow_call(self, up: Upstream, method: str, target: str,
                           fwd: list[tuple[bytes, bytes]], body: bytes) -> None:
        try:
            resp = await up.request(method, target, [*fwd, (b"x-stratum-shadow", b"1")], body,
                                    self.cfg.upstream_timeout_s)
            self.metrics.shadow.labels("ok" if resp.status < 500 else "error").inc()
        except UpstreamError:
            self.metrics.shadow.labels("error").inc()
        finally:
            self._shadow_inflight -= 1

    def install(self, spec: RoutesSpec, part: str = "") -> None:
        """Install ``spec`` as the table of deployment ``part`` (the whole table when
        ``part`` is empty, as in static mode) beside the other deployments served here."""
        self.parts = {part: spec} if not part else {
            **{k: v for k, v in self.parts.items() if k}, part: spec}
        self.part_etags = {k: v.etag() for k, v in self.parts.items()}
        self._rebuild()

    def remove(self, part: str) -> bool:
        """Stop serving deployment ``part``; False when it was not served here."""
        if part not in self.parts:
            return False
        self.parts = {k: v for k, v in self.parts.items() if k != part}
        self.part_etags = {k: v.etag() for k, v in self.parts.items()}
        self._rebuild()
        return True

    def _rebuild(self) -> None:
        """Swap in the merged table atomically; replicas that left get their idle
        connections closed (requests in flight on them finish)."""
        spec = merge(self.parts) if self.parts else RoutesSpec()
        for name, pool in spec.deployments.items():
            if pool.limits is not None and pool.limits.require_auth is False \
                    and self.cfg.require_auth:
                log.warning("SECURITY: %s is served WITHOUT an API key on this gateway (its "
                            "deployment turned auth off)", name)
        old = self.table
        self.table = RouteTable(spec, self.cfg.policy, old.upstreams, self.tls)
        self.hold.installed()  # requests held for a replica look again
        for url, up in old.upstreams.items():
            if url not in self.table.upstreams:
                up.close()
        log.info("routes installed: etag %s, %d replica(s)", self.table.etag,
                 len(self.table.upstreams))
