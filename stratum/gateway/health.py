"""Replica health: passive ejection from request outcomes, active checks to re-admit.

Passive: a connection-level failure ejects a replica at once (a refused or reset
connection is a strong signal), ``eject_after`` consecutive 5xx eject it too. Active:
every ``interval`` seconds each known replica's ``/v2/health/ready`` is asked; a 200
re-admits it, anything else ejects it. An ejected replica gets no traffic unless every
replica of its group is ejected (panic mode: a guess is better than a certain 503).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from stratum.errors import UpstreamError
from stratum.gateway.upstream import Upstream

log = logging.getLogger(__name__)


class Health:
    def __init__(self, eject_after: int, interval: float, timeout: float = 1.0) -> None:
        self.eject_after = eject_after
        self.interval = interval
        self.timeout = timeout
        self.ejections = 0

    def on_success(self, up: Upstream) -> None:
        up.failures = 0

    def on_failure(self, up: Upstream, connection_level: bool) -> None:
        up.failures += 1
        up.errors += 1
        if up.healthy and (connection_level or up.failures >= self.eject_after):
            up.healthy = False
            self.ejections += 1
            up.close()
            log.warning("ejected replica %s after %d failure(s)", up.url, up.failures)

    async def check(self, up: Upstream) -> bool:
        try:
            resp = await up.request("GET", "/v2/health/ready", [], b"", self.timeout)
            ok = resp.status == 200
        except UpstreamError:
            ok = False
        if ok and not up.healthy:
            log.info("re-admitted replica %s", up.url)
            up.failures = 0
        elif not ok and up.healthy:
            self.ejections += 1
            log.warning("replica %s failed its health check; ejected", up.url)
        up.healthy = ok
        return ok

    async def run(self, upstreams: Callable[[], Iterable[Upstream]]) -> None:
        """Check every replica forever (cancel the task to stop)."""
        while True:
            ups = list(upstreams())
            if ups:
                await asyncio.gather(*(self.check(u) for u in ups))
            await asyncio.sleep(self.interval)
