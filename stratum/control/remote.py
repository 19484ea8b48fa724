"""What the supervisor asks of its replicas and gateways over HTTP: are you ready or live,
load this version (hot swap), finish what you have (drain), serve this routing table, and
(for the autoscaler) what load do you see.

Every call answers with a plain outcome instead of raising: a replica or gateway that does
not answer is a fact the reconcile loop works with, not an error.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from stratum.security.tokens import REPLICA_SECRET_HEADER

log = logging.getLogger(__name__)


class Remote:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def ok(self, url: str) -> bool:
        """GET ``url`` answers 200 within half a second (a readiness or liveness probe)."""
        try:
            return (await self.http.get(url, timeout=0.5)).status_code == 200
        except httpx.HTTPError:
            return False

    async def swap(self, replica_url: str, secret: str, version: int,
                   timeout: float) -> tuple[bool, str]:
        """``(swapped, detail)``: load ``version`` beside the current one, switch when warm."""
        try:
            resp = await self.http.post(replica_url + "/admin/swap", json={"ref": str(version)},
                                        headers=_secret(secret), timeout=timeout)
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return resp.status_code == 200, resp.text[-600:]

    async def drain(self, replica_url: str, secret: str, timeout: float) -> None:
        try:
            await self.http.post(replica_url + "/admin/drain", headers=_secret(secret),
                                 timeout=timeout)
        except httpx.HTTPError:
            pass  # it is stopped next anyway

    async def push_routes(self, name: str, gateway_url: str, body: str, token: str) -> bool:
        """Install deployment ``name``'s routing table on a gateway of its port (``token``:
        the admin token that gateway was started with); True once it has."""
        try:
            r = await self.http.put(
                f"{gateway_url}/admin/routes/{name}", content=body,
                headers={"content-type": "application/json", "x-stratum-admin-token": token})
        except httpx.HTTPError as exc:
            log.warning("could not push the routes of %s to %s: %s", name, gateway_url, exc)
            return False
        if r.status_code != 200:
            log.warning("gateway %s refused the routes of %s: %s %s", gateway_url, name,
                        r.status_code, r.text)
        return r.status_code == 200

    async def remove_routes(self, name: str, gateway_url: str, token: str) -> bool:
        """Have a gateway stop serving deployment ``name``; True once it does not (404:
        it did not)."""
        try:
            r = await self.http.delete(f"{gateway_url}/admin/routes/{name}",
                                       headers={"x-stratum-admin-token": token})
        except httpx.HTTPError:
            return False
        return r.status_code in (200, 404)

    async def routes_shown(self, gateway_url: str, token: str) -> dict[str, Any] | None:
        """What a gateway shows of its routes and load (``GET /admin/routes``: in flight
        per replica, requests held); None when it does not answer."""
        try:
            r = await self.http.get(gateway_url + "/admin/routes", timeout=1.0,
                                    headers={"x-stratum-admin-token": token})
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    async def aclose(self) -> None:
        await self.http.aclose()


def _secret(secret: str) -> dict[str, str]:
    """The header that lets us past a replica's check (see ``serve.app``)."""
    return {REPLICA_SECRET_HEADER: secret} if secret else {}
