"""The gateway's own routes: ``/v2/health/live``, ``/v2/health/ready`` (some replica is
healthy), ``/metrics``, ``GET|PUT /admin/routes`` and ``PUT|DELETE /admin/routes/NAME``
(the supervisor installs each deployment's routing table here), ``GET /admin/info`` and
``GET /openapi.json`` (``gateway.openapi``). Admission (keys, admin token) happens before these."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Protocol

import orjson
from pydantic import ValidationError

from stratum.config.settings import GatewaySettings
from stratum.errors import BadRequestError, MethodNotAllowedError, NotFoundError
from stratum.gateway.call import JSON_HEADERS, Call, read_call_body
from stratum.gateway.hold import Hold, routed
from stratum.gateway.metrics import GatewayMetrics
from stratum.gateway.openapi import document_json
from stratum.gateway.retry import RetryBudget
from stratum.gateway.traffic import RoutesSpec, RouteTable
from stratum.security.names import validate_name

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
# One deployment's part of the table (several deployments can share a gateway's port).
PART = "/admin/routes/{name}"
_PART_PREFIX = "/admin/routes/"


class GatewayState(Protocol):
    """What the local routes read and change of the gateway that owns them."""

    cfg: GatewaySettings
    name: str | None
    table: RouteTable
    metrics: GatewayMetrics
    budget: RetryBudget
    hold: Hold

    part_etags: dict[str, str]

    def install(self, spec: RoutesSpec, part: str = "") -> None: ...

    def remove(self, part: str) -> bool: ...


Handler = Callable[[Call], Awaitable[Answer]]


class LocalRoutes:
    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        # Everything the gateway answers itself (the rest under /v1/ and /v2 is forwarded);
        # its OpenAPI document lists the same, which a unit test checks.
        self.table: dict[tuple[str, str], Handler] = {
            ("GET", "/v2/health/live"): self._live,
            ("GET", "/v2/health/ready"): self._ready,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/admin/routes"): self._get_routes,
            ("PUT", "/admin/routes"): self._put_routes,
            ("PUT", PART): self._put_part,
            ("DELETE", PART): self._delete_part,
            ("GET", "/admin/info"): self._info,
            ("GET", "/openapi.json"): self._openapi,
        }
        self._methods: dict[str, list[str]] = {}
        for method, path in self.table:
            self._methods.setdefault(path, []).append(method)

    def find(self, method: str, path: str) -> Handler | None:
        """The handler of a local route; a local path asked with another method gets one
        that answers 405 (after admission: /admin/* still answers 401 first)."""
        if path.startswith(_PART_PREFIX):
            path = PART
        handler = self.table.get((method, path))
        if handler is None and path in self._methods:
            return self._not_allowed
        return handler

    async def _not_allowed(self, call: Call) -> Answer:
        path = PART if call.path.startswith(_PART_PREFIX) else call.path
        raise MethodNotAllowedError(f"{call.method} is not allowed on {call.path}; use "
                                    f"{', '.join(self._methods[path])}")

    async def _openapi(self, _: Call) -> Answer:
        return 200, JSON_HEADERS, document_json()

    async def _live(self, _: Call) -> Answer:
        return 200, JSON_HEADERS, b'{"live":true}'

    async def _ready(self, _: Call) -> Answer:
        # A deployment scaled to zero takes requests (held while a replica starts): a load
        # balancer must keep sending them, or nothing would ever wake it.
        ok = any(u.healthy for u in self.gw.table.upstreams.values()) or any(
            not routed(p) for p in self.gw.table.pools.values())
        return (200 if ok else 503), JSON_HEADERS, orjson.dumps({"ready": ok})

    async def _metrics(self, _: Call) -> Answer:
        ups = self.gw.table.upstreams.values()
        self.gw.metrics.replicas.set(len(ups))
        self.gw.metrics.healthy.set(sum(1 for u in ups if u.healthy))
        self.gw.metrics.held.set(self.gw.hold.held())
        return 200, [(b"content-type", b"text/plain; version=0.0.4")], self.gw.metrics.render()

    async def _get_routes(self, _: Call) -> Answer:
        return 200, JSON_HEADERS, orjson.dumps(self._shown())

    def _shown(self) -> dict[str, object]:
        """The table, each replica's counters, the requests held per pool (what the control
        plane's autoscaler reads) and each deployment's part by etag (what it pushed)."""
        return self.gw.table.describe() | {"waiting": dict(self.gw.hold.waiting),
                                           "parts": dict(self.gw.part_etags)}

    async def _info(self, _: Call) -> Answer:
        ups = self.gw.table.upstreams.values()
        return 200, JSON_HEADERS, orjson.dumps({
            "role": "gateway", "name": self.gw.name, "pid": os.getpid(), "etag": self.gw.table.etag,
            "replicas": len(ups), "healthy": sum(1 for u in ups if u.healthy),
            "retries": {"spent": self.gw.budget.spent, "refused": self.gw.budget.refused},
        })

    async def _put_routes(self, call: Call) -> Answer:
        self.gw.install(await self._spec(call))
        return 200, JSON_HEADERS, orjson.dumps(self._shown())

    async def _put_part(self, call: Call) -> Answer:
        """One deployment's table, beside the others sharing this gateway."""
        name = _part_name(call.path)
        self.gw.install(await self._spec(call), name)
        return 200, JSON_HEADERS, orjson.dumps(self._shown())

    async def _delete_part(self, call: Call) -> Answer:
        name = _part_name(call.path)
        if not self.gw.remove(name):
            raise NotFoundError(f"deployment {name!r} is not served by this gateway")
        return 200, JSON_HEADERS, orjson.dumps(self._shown())

    async def _spec(self, call: Call) -> RoutesSpec:
        body = await read_call_body(call, self.gw.cfg.max_body_bytes)
        try:
            return RoutesSpec.model_validate_json(body)
        except ValidationError as exc:
            raise BadRequestError(f"invalid routes: {exc.errors(include_url=False)}") from exc


def _part_name(path: str) -> str:
    return validate_name(path[len(_PART_PREFIX):], "deployment name")  # 400 when not one

