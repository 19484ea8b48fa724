"""Holding requests for a deployment scaled to zero until one of its replicas is routed.

An autoscaled deployment with ``min_replicas 0`` that saw no traffic for its cooldown has
no replica; its pool stays in the routing table, empty. A request for it waits here. The
waiting requests are counted per pool and shown by ``GET /admin/routes`` (``waiting``):
that is how the control plane's autoscaler learns there is demand and starts a replica.
Once a table that routes the pool to a replica is installed the requests go on as any
other would.

Bounded in count and time, since each held request keeps its body and its connection: at
most ``gateway.hold_max_requests`` wait, each at most ``gateway.hold_timeout_s``; past
either the answer is a 503 (``NoReplicaError``) with ``retry-after``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from stratum.errors import NoReplicaError, NotFoundError
from stratum.gateway.traffic import Pool

RETRY_AFTER_S = 1


def routed(pool: Pool) -> bool:
    """Whether ``pool`` has a replica to send to (healthy or not: that is the balancer's)."""
    return any(g.replicas for g in pool.groups)


class Hold:
    def __init__(self, timeout_s: float, max_requests: int) -> None:
        self.timeout_s = timeout_s
        self.max_requests = max_requests
        self.waiting: Counter[str] = Counter()  # by pool name
        # One future per waiting request, resolved by each new table: no asyncio.Event,
        # which would bind to the loop of its first waiter.
        self._wakers: set[asyncio.Future[None]] = set()

    def held(self) -> int:
        return sum(self.waiting.values())

    async def until_routed(self, name: str, find: Callable[[], Pool | None]) -> Pool:
        """Wait until ``find()`` gives pool ``name`` with a replica in it, and return it."""
        if self.held() >= self.max_requests:
            raise NoReplicaError(f"{name} has no replica ready and {self.held()} requests "
                                 "already wait for one", hint="retry after the retry-after")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        self.waiting[name] += 1
        try:
            while True:
                pool = find()
                if pool is None:  # undeployed while it waited
                    raise NotFoundError(f"model {name!r} is no longer deployed behind this "
                                        "gateway")
                if routed(pool):
                    return pool
                left = deadline - loop.time()
                if left <= 0:
                    raise NoReplicaError(
                        f"no replica of {name} was ready within {self.timeout_s:g} s",
                        hint="it is scaled to zero and one is starting; retry after the "
                             "retry-after")
                waker = loop.create_future()
                self._wakers.add(waker)
                try:
                    await asyncio.wait((waker,), timeout=left)
                finally:
                    self._wakers.discard(waker)
        finally:
            self.waiting[name] -= 1
            if self.waiting[name] <= 0:
                del self.waiting[name]

    def installed(self) -> None:
        """A new routing table: every held request looks again."""
        for waker in self._wakers:
            if not waker.done():
                waker.set_result(None)
        self._wakers.clear()


__all__ = ["RETRY_AFTER_S", "Hold", "routed"]
