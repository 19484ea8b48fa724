"""Rate-limit buckets in Redis (``gateway.rate_limit_url``), shared by the gateways of
every host that names the same Redis.

One Lua script takes a token atomically: GCRA, the same admissions as the token bucket of
``ratelimit.RateLimiter`` (``rate`` per second, ``burst`` deep), kept as one number per
key (its theoretical arrival time, in microseconds of Redis's own clock, so the hosts'
clocks never need to agree). The key expires when its bucket is full again, so Redis
holds only the keys active in the last ``burst / rate`` seconds.

Rate limiting must not take serving down: when Redis does not answer within
``gateway.rate_limit_timeout_s``, the check falls back to this host's shared table
(``ratelimit.SharedLimiter``; a key then gets the rate once per host), with a warning
logged once per outage and each such check counted; Redis is tried again a second later.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from stratum.gateway.ratelimit import OnFallback, RateLimiter, SharedLimiter, depth, limited

log = logging.getLogger(__name__)

_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat <= now or tat > now + span + 1000 then tat = now end
local new = tat + interval
if new - now > span + 0.001 then return math.ceil(new - now - span) end
redis.call('SET', KEYS[1], new, 'PX', math.ceil((new - now) / 1000) + 1)
return 0
"""
RETRY_S = 1.0  # how long after a failure the local table decides alone
_POOL = 32  # connections per gateway: a check holds one for a round trip


def shown(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class RedisBuckets:
    """The connection to the Redis of ``gateway.rate_limit_url`` and its health, shared by
    the limiters of one gateway. Connects on the first check, on the serving loop."""

    def __init__(self, url: str, timeout_s: float, on_fallback: OnFallback | None = None,
                 prefix: str = "stratum:rl:") -> None:
        self.url, self.timeout_s, self.prefix = url, timeout_s, prefix
        self.on_fallback = on_fallback
        self._client: Redis | None = None
        self._script: Any = None
        self.down_until = 0.0  # monotonic; until then the local table decides
        self.down = False
        self.fallbacks = 0

    def _connect(self) -> Any:
        # No retries: one timeout is all a request may wait before the local table decides.
        pool = BlockingConnectionPool.from_url(
            self.url, max_connections=_POOL, timeout=self.timeout_s,
            socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0))
        self._client = Redis(connection_pool=pool)
        self._script = self._client.register_script(_GCRA)
        return self._script

    def limiter(self, name: str, rate: float, burst: float | None,
                local: SharedLimiter | RateLimiter) -> RedisLimiter:
        return RedisLimiter(self, name, rate, burst, local)

    async def run(self, key: str, interval_us: float, span_us: float) -> int:
        """The script's answer: 0 admitted, else microseconds to wait."""
        script = self._script or self._connect()
        # socket_timeout bounds each read; wait_for bounds the whole call (connect, pool).
        got = await asyncio.wait_for(script(keys=[key], args=[interval_us, span_us]),
                                     self.timeout_s * 2)
        if self.down:
            self.down = False
            log.info("rate limits: Redis at %s answers again; the limits hold across "
                     "hosts again", shown(self.url))
        return int(got)

    def failed(self, exc: BaseException) -> None:
        self.down_until = time.monotonic() + RETRY_S
        if not self.down:
            self.down = True
            log.warning("rate limits: Redis at %s did not answer (%s: %s); each host's "
                        "gateways share their own buckets until it does (a key gets the "
                        "rate once per host meanwhile)", shown(self.url),
                        type(exc).__name__, exc)

    def fell_back(self) -> None:
        self.fallbacks += 1
        if self.on_fallback is not None:
            self.on_fallback("redis")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client, self._script = None, None


class RedisLimiter:
    """One limiter's buckets in Redis; ``local`` decides while Redis does not answer."""

    def __init__(self, redis: RedisBuckets, name: str, rate: float, burst: float | None,
                 local: SharedLimiter | RateLimiter) -> None:
        self.redis, self.rate, self.local = redis, rate, local
        self.burst = depth(rate, burst)
        self._interval_us = 1e6 / rate
        self._span_us = self.burst * self._interval_us
        digest = hashlib.blake2b(f"{name}\0{rate!r}\0{self.burst!r}".encode(),
                                 digest_size=6).hexdigest()
        self._prefix = f"{redis.prefix}{name}:{digest}:"

    async def take(self, key: str) -> None:
        """Take one token for ``key`` or raise RateLimitedError."""
        r = self.redis
        if r.down and time.monotonic() < r.down_until:
            r.fell_back()
            self.local.check(key)
            return
        # Hashed: a key's name (or a client's address) is not left readable in Redis.
        name = hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
        try:
            wait_us = await r.run(self._prefix + name, self._interval_us, self._span_us)
        except (TimeoutError, OSError, RedisError) as exc:
            r.failed(exc)
            r.fell_back()
            self.local.check(key)
            return
        if wait_us > 0:
            raise limited(self.rate, key, wait_us / 1e6)


__all__ = ["RETRY_S", "RedisBuckets", "RedisLimiter", "shown"]
