"""The gateway's admission: the scope each path needs, a key where the gateway or the
deployment asks for one, and token-bucket rate limits per key (the gateway's, and each
deployment's own). Key checking itself is ``stratum.security.access``; where the buckets
live (this process, a table shared by the host's gateways, Redis) is ``Buckets``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from stratum.config.settings import GatewaySettings, Settings
from stratum.errors import ServingError
from stratum.gateway.call import Call
from stratum.gateway.ratelimit import OnFallback, RateLimiter, SharedLimiter, table_path
from stratum.gateway.traffic import Pool
from stratum.security.access import KeyChecker, presented_key

if TYPE_CHECKING:
    from stratum.gateway.ratelimit_redis import RedisBuckets

log = logging.getLogger(__name__)


def scope_for(path: str) -> str | None:
    """The scope a path needs; None for the open probes (health, metrics)."""
    if path.startswith("/admin/"):
        return "admin"
    if path.startswith(("/v2/health/", "/metrics")):
        return None
    if path.endswith("/feedback"):
        return "feedback"
    return "predict"


class Limiter(Protocol):
    rate: float

    async def take(self, key: str) -> None:
        """Take one token for ``key`` or raise RateLimitedError (429)."""


class Buckets:
    """Where one gateway keeps its limiters' buckets: in Redis when ``url`` is set (with
    the host's table to fall back on), else in a table under ``home`` that every gateway
    of this host shares, else (no home) in this process."""

    def __init__(self, home: Path | None = None, port: int | None = None, *,
                 url: str | None = None, timeout_s: float = 0.1,
                 on_fallback: OnFallback | None = None) -> None:
        self.home, self.port, self.on_fallback = home, port, on_fallback
        self.redis: RedisBuckets | None = None
        if url:
            from stratum.gateway.ratelimit_redis import RedisBuckets

            self.redis = RedisBuckets(url, timeout_s, on_fallback)

    @classmethod
    def of(cls, settings: Settings, port: int | None,
           on_fallback: OnFallback | None = None) -> Buckets:
        """A gateway's: shared through its home when the home exists (a gateway never
        makes one), on ``port`` (else ``gateway.port``)."""
        g = settings.gateway
        home = settings.home if settings.home.is_dir() else None
        return cls(home, port if port is not None else g.port, url=g.rate_limit_url,
                   timeout_s=g.rate_limit_timeout_s, on_fallback=on_fallback)

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.close()

    def gateway(self, rate: float, burst: float | None) -> Limiter:
        """The gateway-wide limit: one per port."""
        return self._make(f"port-{self.port}", rate, burst)

    def deployment(self, name: str, rate: float, burst: float | None) -> Limiter:
        return self._make(f"deployment-{name}", rate, burst)

    def _make(self, label: str, rate: float, burst: float | None) -> Limiter:
        local: SharedLimiter | RateLimiter = RateLimiter(rate, burst)
        if self.home is not None:
            path = table_path(self.home, label, rate, burst)
            try:
                local = SharedLimiter(path, rate, burst, on_fallback=self.on_fallback)
            except OSError as exc:  # an unusable home must not stop serving
                log.error("rate limit %s: cannot use the shared table %s (%s); this "
                          "gateway keeps its own buckets, so each gateway of the port "
                          "allows the full rate", label, path, exc)
        if self.redis is not None:
            return self.redis.limiter(label, rate, burst, local)
        return local


class Admission:
    def __init__(self, cfg: GatewaySettings, keys: KeyChecker | None,
                 buckets: Buckets | None = None) -> None:
        self.cfg, self.keys = cfg, keys
        self.buckets = buckets if buckets is not None else Buckets()
        self.limiter = (self.buckets.gateway(cfg.rate_limit_per_s, cfg.rate_limit_burst)
                        if cfg.rate_limit_per_s else None)
        self._limiters: dict[tuple[str, float, int | None], Limiter] = {}

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
            await self.limiter.take(who)
        if pool is not None and limits is not None and limits.rate_limit_per_s:
            await self._of(pool.name, limits.rate_limit_per_s, limits.rate_limit_burst).take(who)

    def _of(self, name: str, rate: float, burst: int | None) -> Limiter:
        """The deployment's limiter, kept across tables while its rate stays the same."""
        key = (name, rate, burst)
        lim = self._limiters.get(key)
        if lim is None:
            self._limiters = {k: v for k, v in self._limiters.items() if k[0] != name}
            lim = self._limiters[key] = self.buckets.deployment(name, rate, burst)
        return lim
