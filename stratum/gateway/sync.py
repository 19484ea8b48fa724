"""A named gateway follows its deployment's routing table in the store.

The leading control plane writes every new table to the store before it pushes it
(``store.runtime``). Pushes are the fast path; this poll is what makes every gateway of a
deployment converge however it was started — a replacement after a crash, a second one
started by hand beside the first, one whose push was lost, one whose control plane is
being replaced. One primary-key read of a 16-character etag per interval; the table itself
is read only when the etag changed. A store that does not answer (PostgreSQL restarting)
costs nothing but a log line: the gateway keeps serving the table it has.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from pydantic import ValidationError

from stratum.gateway.traffic import RoutesSpec, RouteTable
from stratum.store.runtime import RuntimeStore

log = logging.getLogger(__name__)


class Installs(Protocol):
    table: RouteTable

    def install(self, spec: RoutesSpec) -> None: ...


def stored_routes(runtime: RuntimeStore, name: str) -> RoutesSpec | None:
    """The routing table last written for deployment ``name``, if any."""
    rt = runtime.runtime(name)
    if rt is None or not rt.routes:
        return None
    try:
        return RoutesSpec.model_validate(rt.routes)
    except ValidationError:
        log.warning("the stored routes of %s are not valid; keeping the current table", name)
        return None


async def follow_routes(gw: Installs, runtime: RuntimeStore, name: str,
                        interval: float) -> None:
    """Install each new table of ``name`` as the store gets it (cancel to stop)."""
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            etag = await asyncio.to_thread(runtime.etag, name)
            if etag is not None and etag != gw.table.etag:
                spec = await asyncio.to_thread(stored_routes, runtime, name)
                if spec is not None:
                    gw.install(spec)
            if failing:
                log.info("the store answers again; following the routes of %s", name)
            failing = False
        except Exception as exc:  # the store is away: serve what we have
            if not failing:
                log.warning("cannot read the routes of %s from the store (%s); serving the "
                            "current table", name, exc)
            failing = True


__all__ = ["follow_routes", "stored_routes"]
