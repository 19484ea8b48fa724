"""A named gateway follows the routing tables of the deployments on its port in the store.

The leading control plane writes every new table to the store before it pushes it
(``store.runtime``). Pushes are the fast path; this poll is what makes every gateway of a
deployment converge however it was started — a replacement after a crash, a second one
started by hand beside the first, one whose push was lost, one whose control plane is
being replaced — and what makes a gateway serve every deployment sharing its port, each
with its own table. One indexed read of the port's etags per interval; a table itself is
read only when its etag changed. A store that does not answer (PostgreSQL restarting)
costs nothing but a log line: the gateway keeps serving the table it has.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from pydantic import ValidationError

from stratum.gateway.traffic import RoutesSpec
from stratum.store.runtime import RuntimeStore

log = logging.getLogger(__name__)


class Installs(Protocol):
    part_etags: dict[str, str]

    def install(self, spec: RoutesSpec, part: str = "") -> None: ...

    def remove(self, part: str) -> bool: ...


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


def followed(runtime: RuntimeStore, port: int, name: str | None) -> dict[str, str]:
    """``{deployment: etag}`` a gateway serves: every deployment on its ``port``, and its
    own deployment ``name`` wherever that is (a gateway started by hand on another port)."""
    out = runtime.etags_on_port(port)
    if name and name not in out and (etag := runtime.etag(name)) is not None:
        out[name] = etag
    return out


def routes_on_port(runtime: RuntimeStore, port: int,
                   name: str | None = None) -> dict[str, RoutesSpec]:
    """The tables a gateway starts with (``followed``)."""
    out = {}
    for part in followed(runtime, port, name):
        spec = stored_routes(runtime, part)
        if spec is not None:
            out[part] = spec
    return out


async def sync_once(gw: Installs, runtime: RuntimeStore, port: int,
                    name: str | None = None) -> None:
    """Bring ``gw`` to the tables the store has (``followed``): new and changed ones in,
    deployments no longer there out."""
    stored = await asyncio.to_thread(followed, runtime, port, name)
    for name, etag in stored.items():
        held = gw.part_etags.get(name)
        if etag == held:
            continue
        spec = await asyncio.to_thread(stored_routes, runtime, name)
        # A push may have landed while we read: it is at least as new as the store.
        if spec is not None and gw.part_etags.get(name) == held:
            gw.install(spec, name)
    for name in [n for n in gw.part_etags if n and n not in stored]:
        gw.remove(name)


async def follow_routes(gw: Installs, runtime: RuntimeStore, port: int, name: str | None,
                        interval: float) -> None:
    """Follow the tables of ``followed`` as the store gets them (cancel to stop)."""
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            await sync_once(gw, runtime, port, name)
            if failing:
                log.info("the store answers again; following the routes of port %d", port)
            failing = False
        except Exception as exc:  # the store is away: serve what we have
            if not failing:
                log.warning("cannot read the routes of port %d from the store (%s); serving "
                            "the current table", port, exc)
            failing = True


__all__ = ["follow_routes", "followed", "routes_on_port", "stored_routes", "sync_once"]
