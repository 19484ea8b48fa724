"""The gateway's own routes: ``/v2/health/live``, ``/v2/health/ready`` (some replica is
healthy), ``/metrics``, ``GET|PUT /admin/routes`` (the supervisor installs the routing
table here) and ``GET /admin/info``. Admission (keys, admin token) happens before these."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Protocol

import orjson
from pydantic import ValidationError

from stratum.config.settings import GatewaySettings
from stratum.errors import BadRequestError
from stratum.gateway.call import JSON_HEADERS, Call, read_call_body
from stratum.gateway.metrics import GatewayMetrics
from stratum.gateway.retry import RetryBudget
from stratum.gateway.traffic import RoutesSpec, RouteTable

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class GatewayState(Protocol):
    """What the local routes read and change of the gateway that owns them."""

    cfg: GatewaySettings
    name: str | None
    table: RouteTable
    metrics: GatewayMetrics
    budget: RetryBudget

    def install(self, spec: RoutesSpec) -> None: ...


class LocalRoutes:
    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw

    def find(self, method: str, path: str) -> Callable[[Call], Awaitable[
            Answer]] | None:
        if path == "/v2/health/live":
            return self._live
        if path == "/v2/health/ready":
            return self._ready
        if path == "/metrics":
            return self._metrics
        if path == "/admin/routes":
            return self._put_routes if method == "PUT" else self._get_routes
        if path == "/admin/info":
            return self._info
        return None

    async def _live(self, _: Call) -> Answer:
        return 200, JSON_HEADERS, b'{"live":true}'

    async def _ready(self, _: Call) -> Answer:
        ok = any(u.healthy for u in self.gw.table.upstreams.values())
        return (200 if ok else 503), JSON_HEADERS, orjson.dumps({"ready": ok})

    async def _metrics(self, _: Call) -> Answer:
        ups = self.gw.table.upstreams.values()
        self.gw.metrics.replicas.set(len(ups))
        self.gw.metrics.healthy.set(sum(1 for u in ups if u.healthy))
        return 200, [(b"content-type", b"text/plain; version=0.0.4")], self.gw.metrics.render()

    async def _get_routes(self, _: Call) -> Answer:
        return 200, JSON_HEADERS, orjson.dumps(self.gw.table.describe())

    async def _info(self, _: Call) -> Answer:
        ups = self.gw.table.upstreams.values()
        return 200, JSON_HEADERS, orjson.dumps({
            "role": "gateway", "name": self.gw.name, "pid": os.getpid(), "etag": self.gw.table.etag,
            "replicas": len(ups), "healthy": sum(1 for u in ups if u.healthy),
            "retries": {"spent": self.gw.budget.spent, "refused": self.gw.budget.refused},
        })

    async def _put_routes(self, call: Call) -> Answer:
        body = await read_call_body(call, self.gw.cfg.max_body_bytes)
        try:
            spec = RoutesSpec.model_validate_json(body)
        except ValidationError as exc:
            raise BadRequestError(f"invalid routes: {exc.errors(include_url=False)}") from exc
        self.gw.install(spec)
        return 200, JSON_HEADERS, orjson.dumps(self.gw.table.describe())

