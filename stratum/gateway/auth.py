"""The gateway's admission: the scope each path needs, a key where the gateway or the
deployment asks for one, and token-bucket rate limits per key (the gateway's, and each
deployment's own). Key checking itself is ``stratum.security.access``."""

from __future__ import annotations

import time
from collections.abc import Callable

from stratum.config.settings import GatewaySettings
from stratum.errors import RateLimitedError, ServingError
from stratum.gateway.call import Call
from stratum.gateway.traffic import Pool
from stratum.security.access import KeyChecker, presented_key


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


class Admission:
    def __init__(self, cfg: GatewaySettings, keys: KeyChecker | None) -> None:
        self.cfg, self.keys = cfg, keys
        self.limiter = (RateLimiter(cfg.rate_limit_per_s, cfg.rate_limit_burst)
                        if cfg.rate_limit_per_s else None)
        self._limiters: dict[tuple[str, float, int | None], RateLimiter] = {}

    async def admit(self, call: Call, pool: Pool | None) -> None:
        """Raise 401/403/429, or return. A key is needed when ``gateway.require_auth`` is on
        or the deployment (``pool.limits``) says so; its rate limit counts on top."""
        limits = pool.limits if pool is not None else None
        need = self.cfg.require_auth
        if limits is not None and limits.require_auth is not None:
            need = limits.require_auth
        who: str
        if need:
            if self.keys is None:
                raise ServingError("this deployment needs an API key but the gateway has no "
                                   "metadata store to check keys",
                                   hint="start the gateway with the deployment's --name")
            who = await self.keys.authorize(presented_key(call.headers),
                                            scope_for(call.path) or "predict")
        else:
            who = call.client or "anonymous"
        if self.limiter is not None:
            self.limiter.check(who)
        if pool is not None and limits is not None and limits.rate_limit_per_s:
            self._of(pool.name, limits.rate_limit_per_s, limits.rate_limit_burst).check(who)

    def _of(self, name: str, rate: float, burst: int | None) -> RateLimiter:
        """The deployment's limiter, kept across tables while its rate stays the same."""
        key = (name, rate, burst)
        lim = self._limiters.get(key)
        if lim is None:
            self._limiters = {k: v for k, v in self._limiters.items() if k[0] != name}
            lim = self._limiters[key] = RateLimiter(rate, burst)
        return lim
