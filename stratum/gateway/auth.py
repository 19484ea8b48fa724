"""API keys with scopes, and a token-bucket rate limit per key.

Keys live hashed in the metadata store (``stratum keys create``); the gateway caches a
verdict per presented key for ``auth_cache_s`` so the hot path costs one dict lookup, and
a revocation takes effect within that many seconds. Keys come as
``Authorization: Bearer sk_...`` or ``x-api-key: sk_...``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from stratum.errors import AuthError, PermissionDeniedError, StratumError
from stratum.security.keys import key_id_of, verify_key
from stratum.store.metadata import MetadataStore


class RateLimitedError(StratumError):
    http_status = 429


def scope_for(path: str) -> str | None:
    """The scope a path needs; None for the open probes (health, metrics)."""
    if path.startswith("/admin/"):
        return "admin"
    if path.startswith(("/v2/health/", "/metrics")):
        return None
    if path.endswith("/feedback"):
        return "feedback"
    return "predict"


@dataclass(slots=True)
class _Verdict:
    key_id: str | None  # None: the key is unknown, revoked or wrong
    scopes: frozenset[str]
    expires: float


class KeyChecker:
    """Resolve a presented key to its id and scopes, caching verdicts."""

    def __init__(self, meta: MetadataStore, ttl: float) -> None:
        self.meta = meta
        self.ttl = ttl
        self._cache: dict[str, _Verdict] = {}

    async def authorize(self, key: str | None, scope: str) -> str:
        """Return the key id allowed ``scope``; raise AuthError (401) or
        PermissionDeniedError (403)."""
        if not key:
            raise AuthError("an API key is required",
                            hint="send 'Authorization: Bearer sk_...'; see `stratum keys create`")
        now = time.monotonic()
        v = self._cache.get(key)
        if v is None or v.expires < now:
            v = await asyncio.to_thread(self._lookup, key, now)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = v
        if v.key_id is None:
            raise AuthError("the API key is not valid (unknown or revoked)")
        if scope not in v.scopes:
            raise PermissionDeniedError(
                f"API key {v.key_id} lacks the {scope!r} scope",
                hint=f"create a key with `stratum keys create NAME --scope {scope}`")
        return v.key_id

    def _lookup(self, key: str, now: float) -> _Verdict:
        key_id = key_id_of(key)
        row = self.meta.api_key(key_id) if key_id else None
        if row is None or row.revoked_at is not None or not verify_key(key, row.key_hash):
            return _Verdict(None, frozenset(), now + self.ttl)
        return _Verdict(row.key_id, frozenset(row.scopes), now + self.ttl)


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, token = auth.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token:
            return token.strip()
    key = headers.get(b"x-api-key")
    return key.decode("latin-1").strip() if key else None


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
