"""Who may call: the presented API key resolved to its id and scopes.

Keys live hashed in the metadata store (``stratum keys create``). A checker caches a
verdict per presented key for ``ttl`` seconds so the hot path costs one dict lookup, and a
revocation takes effect within that many seconds. Keys come as
``Authorization: Bearer sk_...`` or ``x-api-key: sk_...``.

The store is reached through the small ``KeyDirectory`` protocol (the metadata store
satisfies it), so security sits beside the store rather than on top of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from stratum.errors import AuthError, PermissionDeniedError
from stratum.security.keys import key_id_of, verify_key


class KeyRecord(Protocol):
    @property
    def key_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def key_hash(self) -> str: ...
    @property
    def scopes(self) -> Sequence[str]: ...
    @property
    def revoked_at(self) -> datetime | None: ...


class KeyDirectory(Protocol):
    def api_key(self, key_id: str) -> KeyRecord | None: ...


@dataclass(slots=True)
class _Verdict:
    key_id: str | None  # None: the key is unknown, revoked or wrong
    scopes: frozenset[str]
    expires: float
    name: str = ""


class KeyChecker:
    """Resolve a presented key to its id and scopes, caching verdicts."""

    def __init__(self, keys: KeyDirectory, ttl: float) -> None:
        self.keys = keys
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
        row = self.keys.api_key(key_id) if key_id else None
        if row is None or row.revoked_at is not None or not verify_key(key, row.key_hash):
            return _Verdict(None, frozenset(), now + self.ttl)
        return _Verdict(row.key_id, frozenset(row.scopes), now + self.ttl, row.name)

    def actor(self, key: str | None) -> str:
        """Who presented ``key``, for the audit log, never the key itself: ``key:ID NAME``
        once ``authorize`` saw it valid (whether or not its scope sufficed), ``key:ID
        (invalid)`` for a wrong or revoked one, ``anonymous`` for none."""
        if not key:
            return "anonymous"
        v = self._cache.get(key)
        if v is not None and v.key_id is not None:
            return f"key:{v.key_id} {v.name}".rstrip()
        claimed = key_id_of(key)  # the public part of a key, if it looks like one
        return f"key:{claimed[:32]} (invalid)" if claimed else "anonymous (invalid key)"


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, token = auth.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token:
            return token.strip()
    key = headers.get(b"x-api-key")
    return key.decode("latin-1").strip() if key else None


def warn_if_auth_off(logger: logging.Logger, require_auth: bool, where: str) -> None:
    """Every process says it at start when predict and feedback are open: the default of
    ``stratum deploy``, which must never pass unnoticed. ``where``: e.g. ``port 8000``."""
    if not require_auth:
        logger.warning("auth is OFF: anyone who can reach %s can predict and post feedback; "
                       "set gateway.require_auth: true", where)


__all__ = ["KeyChecker", "KeyDirectory", "KeyRecord", "presented_key", "warn_if_auth_off"]
