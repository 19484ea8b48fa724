"""Leading or standing by: the control plane's role, and what a standby answers.

``Role.lead`` waits for the lease (``control.lease``), records this instance as the
leader in the store (clients find it there), then starts the supervisor, which first
adopts what runs. While leading it checks the lease every ``control.lease_poll_s``; a
leader that lost it (its database connection dropped: a PostgreSQL restart, a network cut)
stops its supervisor at once *without* stopping the replicas and gateways, and stands by
again: the next leader (maybe itself, once the database is back) adopts them. Two
supervisors never act on the same processes.

A standby serves the same API: ``/health`` says ``standby``, and every other request gets
a 307 to the leader's URL (a 503 with ``retry-after`` while there is none), so a client
that reached any instance reaches the leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from stratum.control.lease import Lease
from stratum.errors import NoLeaderError, NotLeaderError, StratumError
from stratum.store.runtime import RuntimeStore

log = logging.getLogger(__name__)


class Role:
    def __init__(self, lease: Lease, runtime: RuntimeStore, url: str, poll_s: float,
                 *, acquired: bool = False) -> None:
        self.lease, self.runtime, self.url, self.poll_s = lease, runtime, url, poll_s
        self.acquired = acquired  # the caller took the lease already (at start)
        self.leader = False
        self.term = 0
        self._cached: tuple[float, str | None] = (0.0, None)

    async def lead(self, start: Callable[[], Awaitable[None]],
                   stop: Callable[[], Awaitable[None]]) -> None:
        """Wait for the lease, lead (``start``), and keep checking it; when it is lost,
        ``stop`` leading without touching the processes and stand by again (run as a
        task)."""
        while True:
            if not self.acquired:
                log.info("standing by: %s is held by another control plane", self.lease.what)
                while not await asyncio.to_thread(self.lease.try_acquire):
                    await asyncio.sleep(self.poll_s)
            self.acquired = False
            t0 = time.monotonic()
            leader = await asyncio.to_thread(self.runtime.claim_leader, self.url)
            self.term, self.leader = leader.term, True
            log.warning("leading (term %d) at %s", leader.term, self.url)
            await start()
            log.info("took over in %.2f s", time.monotonic() - t0)
            while await asyncio.to_thread(self.lease.held):
                await asyncio.sleep(self.poll_s)
            # Lost it (the database restarted, or dropped our connection): another instance
            # may lead already. Stop acting at once, leave the processes to whoever leads.
            self.leader = False
            log.error("lost %s: no longer leading; the replicas and gateways are left to "
                      "the next leader, and this instance stands by", self.lease.what)
            await stop()

    def leader_url(self) -> str | None:
        """Where the leader is, from the store (cached for a poll interval)."""
        at, url = self._cached
        if time.monotonic() - at > self.poll_s:
            try:
                found = self.runtime.leader()
                url = found.url if found is not None and found.url != self.url else None
            except Exception:  # the store is away: no leader to name
                url = None
            self._cached = (time.monotonic(), url)
        return url


_OWN = frozenset(("/health", "/metrics"))  # what a standby answers itself


class StandbyRedirect:
    """ASGI middleware: while ``role`` does not lead, send every request but ``/health``
    and ``/metrics`` to the leader (307 keeps the method and the body)."""

    def __init__(self, app: ASGIApp, role: Role) -> None:
        self.app, self.role = app, role

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # /metrics too: a standby's own numbers (it leads nothing) are worth scraping.
        if scope["type"] != "http" or self.role.leader or scope["path"] in _OWN:
            await self.app(scope, receive, send)
            return
        leader = await asyncio.to_thread(self.role.leader_url)
        error: StratumError
        if leader is not None:
            target = leader + scope["path"]
            if scope.get("query_string"):
                target += "?" + scope["query_string"].decode("latin-1")
            error = NotLeaderError(f"this control plane stands by; the leader is at {leader}",
                                   hint="follow the redirect")
            headers = [(b"location", target.encode())]
        else:
            error = NoLeaderError("no control plane leads yet; one takes over within seconds",
                                  hint="retry in a second")
            headers = [(b"retry-after", b"1")]
        status, body = error.http_status, orjson.dumps(error.to_dict())
        headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


__all__ = ["Role", "StandbyRedirect"]
