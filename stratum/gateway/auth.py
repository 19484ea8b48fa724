"""The gateway's admission: the scope each path needs, and a token-bucket rate limit per
key. Key checking itself is ``stratum.security.access``."""

from __future__ import annotations

import time
from collections.abc import Callable

from stratum.errors import RateLimitedError


def scope_for(path: str) -> str | None:
    """The scope a path needs; None for the open probes (health, metrics)."""
    if path.startswith("/admin/"):
        return "admin"
    if path.startswith(("/v2/health/", "/metrics")):
        return None
    if path.endswith("/feedback"):
        return "feedback"
    return "predict"


class RateLimiter:
    """One token bucket per key: ``rate`` tokens per second, ``burst`` deep."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, key: str) -> None:
        """Take one token for ``key`` or raise RateLimitedError (429)."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
            raise RateLimitedError(
                f"rate limit of {self.rate:g} requests/s exceeded for {key}",
                hint=f"retry after {wait:.2f}s")
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:
            self._buckets.clear()
