"""The gateway's ``/admin/*`` behind its credential, and audited.

A call needs the supervisor's token (``x-stratum-admin-token``, handed to the gateway at
start) or, where the gateway has the metadata store, an admin-scoped key. Every write
(``PUT /admin/routes``), refused ones included, is recorded: who (``supervisor``, the key's
id and name, or ``anonymous``), from where, the status and what changed (the table's etag,
its deployments and replica count; never the replicas' secrets). A gateway without the
store writes the record as a ``stratum.audit`` log line. Reads are not recorded.
"""

from __future__ import annotations

import hmac
from typing import Any

from stratum.errors import AuthError, NotFoundError, StratumError
from stratum.gateway.call import Call
from stratum.gateway.local import Answer, GatewayState, LocalRoutes
from stratum.security.access import KeyChecker, presented_key
from stratum.store.audit import Auditor

_TOKEN_HEADER = b"x-stratum-admin-token"


class GatewayAdmin:
    def __init__(self, gw: GatewayState, local: LocalRoutes, keys: KeyChecker | None,
                 token: str | None, auditor: Auditor) -> None:
        self.gw, self.local, self.keys = gw, local, keys
        self._token = token.encode() if token else None
        self.auditor = auditor

    async def handle(self, call: Call) -> Answer:
        if call.method in ("GET", "HEAD"):
            await self._admit(call)
            return await self._route(call)
        before = self.gw.table.etag
        status: int = 500
        detail: dict[str, Any] = {}
        try:
            await self._admit(call)
            answer = await self._route(call)
            status = answer[0]
            table = self.gw.table
            detail = {"etag": {"before": before, "after": table.etag},
                      "deployments": sorted(table.pools), "replicas": len(table.upstreams)}
            return answer
        except StratumError as exc:
            status = exc.http_status
            raise
        finally:
            source = f"{call.client}:{call.port}" if call.port else (call.client or "unknown")
            action = call.path.removeprefix("/admin/").replace("/", ".") or "admin"
            target = self.gw.name or ""
            if action.startswith("routes."):  # one deployment's part: it is the target
                action, target = "routes", action.removeprefix("routes.")
            await self.auditor.record(self._actor(call), source,
                                      f"{action}.{call.method.lower()}", target[:128],
                                      status, detail)

    async def _admit(self, call: Call) -> None:
        token = call.headers.get(_TOKEN_HEADER)
        if self._token and token and hmac.compare_digest(token, self._token):
            return  # the supervisor that started this gateway
        if self.keys is None:
            raise AuthError("the admin routes need the supervisor's token",
                            hint="this gateway has no metadata store to check admin "
                                 "keys; set STRATUM_GATEWAY_TOKEN when starting it")
        await self.keys.authorize(presented_key(call.headers), "admin")

    async def _route(self, call: Call) -> Answer:
        route = self.local.find(call.method, call.path)
        if route is None:  # never forwarded: a replica's are the supervisor's
            raise NotFoundError(f"no route {call.path}", hint="the gateway's admin routes "
                                "are /admin/routes and /admin/info")
        return await route(call)

    def _actor(self, call: Call) -> str:
        token = call.headers.get(_TOKEN_HEADER)
        if token is not None:
            ok = self._token is not None and hmac.compare_digest(token, self._token)
            return "supervisor" if ok else "anonymous (wrong supervisor token)"
        if self.keys is None:
            return "anonymous"
        return self.keys.actor(presented_key(call.headers))


__all__ = ["GatewayAdmin"]
