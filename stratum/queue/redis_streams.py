"""The scale-out queue: Redis Streams with one consumer group per stream.

``put`` is an atomic Lua script (SET NX for the dedupe key, then XADD), retried with
backoff while Redis is unreachable, e.g. restarting. Every put carries a key, a random
one when the caller gives none, so a retry after a lost reply does not enqueue twice.
``get`` first reclaims entries whose lease ran out (XAUTOCLAIM with the visibility
timeout as min-idle time), then reads new ones (XREADGROUP ``>``). ``ack`` is XACK plus
XDEL, so the stream holds exactly the un-acked messages.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import orjson
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stratum.errors import QueueError
from stratum.queue.base import Message

T = TypeVar("T")

# KEYS[1] stream, KEYS[2] dedupe key; ARGV[1] payload, ARGV[2] ttl s, ARGV[3] put token.
# The dedupe key stores "token id", so a retry of the same put recognises its own entry.
_PUT = """
local seen = redis.call('GET', KEYS[2])
if seen then return {0, seen} end
local id = redis.call('XADD', KEYS[1], '*', 'p', ARGV[1])
redis.call('SET', KEYS[2], ARGV[3] .. ' ' .. id, 'EX', ARGV[2])
return {1, id}
"""
# Longest single XREADGROUP block; the socket timeout (10 s) must stay above it.
_BLOCK_SLICE_S = 2.0
# How long an internal (caller gave no key) retry-idempotency key is kept.
_RETRY_KEY_TTL_S = 600


class RedisStreamsQueue:
    """At-least-once queue over a Redis stream (``redis://host:port/db?group=NAME``)."""

    def __init__(self, url: str, stream: str = "feedback", *, group: str | None = None,
                 dedupe_ttl_s: float = 7 * 24 * 3600, retry_s: float = 30.0) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.group = group or query.pop("group", ["stratum"])[0]
        self.stream = stream
        self.dedupe_ttl_s = int(max(1, dedupe_ttl_s))
        self.retry_s = retry_s
        # The hash tag keeps a stream and its dedupe keys in one cluster slot (Lua needs it).
        self._key = f"stratum:{{{stream}}}:stream"
        self._dedupe_prefix = f"stratum:{{{stream}}}:dedupe:"
        rest = "&".join(f"{k}={v}" for k, vs in query.items() for v in vs)
        self._client = redis.Redis.from_url(
            urlunsplit(parts._replace(query=rest)), socket_connect_timeout=2,
            socket_timeout=10, decode_responses=False,
        )
        self._put_script = self._client.register_script(_PUT)
        self._group_ready = False

    # -- plumbing ---------------------------------------------------------------------
    def _retry(self, op: Callable[[], T], what: str) -> T:
        """Run ``op``, retrying connection errors with jittered exponential backoff."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            try:
                return op()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self._group_ready = False  # a restarted Redis may have lost the group
                if time.monotonic() + delay > deadline:
                    raise QueueError(
                        f"Redis queue {self.stream!r}: {what} failed for "
                        f"{self.retry_s:.0f}s: {exc}",
                        hint="check that Redis is running and reachable",
                    ) from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise QueueError(f"Redis queue {self.stream!r}: {what} failed: {exc}") from exc
                self._group_ready = False

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self._client.xgroup_create(self._key, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # -- Queue ------------------------------------------------------------------------
    def put(self, payload: dict[str, Any], dedupe_key: str | None = None) -> str | None:
        if not isinstance(payload, dict):
            raise QueueError(f"a queue message must be a JSON object, got {type(payload).__name__}")
        try:
            data = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError as exc:
            raise QueueError(f"queue message is not JSON-serialisable: {exc}") from exc
        if dedupe_key is None:
            key, ttl = self._dedupe_prefix + "~" + uuid.uuid4().hex, _RETRY_KEY_TTL_S
        else:
            key, ttl = self._dedupe_prefix + dedupe_key, self.dedupe_ttl_s
        token = uuid.uuid4().hex
        added, value = self._retry(
            lambda: self._put_script(keys=[self._key, key], args=[data, ttl, token]), "put"
        )
        if added:
            return _s(value)
        seen_token, _, seen_id = _s(value).partition(" ")
        # Our own earlier attempt went through but its reply was lost: not a duplicate.
        return seen_id if seen_token == token else None

    def get(self, max_items: int = 64, visibility_timeout_s: float = 30.0,
            consumer: str = "default", wait_s: float = 0.0) -> list[Message]:
        if max_items < 1:
            raise QueueError(f"max_items must be at least 1, got {max_items}")

        deadline = time.monotonic() + wait_s

        def op() -> list[Message]:
            self._ensure_group()
            out = self._reclaim(max_items, visibility_timeout_s, consumer)
            if len(out) < max_items:
                left = deadline - time.monotonic()
                # Block in slices well under the socket timeout; expired leases are
                # re-checked between slices.
                block = int(min(left, _BLOCK_SLICE_S) * 1000) if not out and left > 0 else None
                resp: Any = self._client.xreadgroup(
                    self.group, consumer, {self._key: ">"}, count=max_items - len(out),
                    block=block or None,
                )
                for _stream, entries in resp or []:
                    out += [Message(_s(i), _payload(f), 1) for i, f in entries if f]
            return out

        while True:
            batch = self._retry(op, "get")
            if batch or time.monotonic() >= deadline:
                return batch

    def _reclaim(self, max_items: int, vt: float, consumer: str) -> list[Message]:
        resp: Any = self._client.xautoclaim(
            self._key, self.group, consumer, min_idle_time=int(vt * 1000),
            start_id="0-0", count=max_items,
        )
        entries = [(i, f) for i, f in resp[1] if f]
        if not entries:
            return []
        ids = [_s(i) for i, _ in entries]
        pend: Any = self._client.xpending_range(
            self._key, self.group, min=ids[0], max=ids[-1], count=len(ids) + 100,
            consumername=consumer,
        )
        counts = {_s(p["message_id"]): int(p["times_delivered"]) for p in pend}
        return [Message(i, _payload(f), counts.get(i, 2))
                for i, (_, f) in zip(ids, entries, strict=True)]

    def ack(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0

        def op() -> int:
            self._ensure_group()
            pipe = self._client.pipeline(transaction=True)
            pipe.xack(self._key, self.group, *ids)
            pipe.xdel(self._key, *ids)
            acked, _deleted = pipe.execute()
            return int(acked)

        return self._retry(op, "ack")

    def pending(self) -> int:
        def op() -> int:
            self._ensure_group()
            return int(self._client.xpending(self._key, self.group)["pending"])

        return self._retry(op, "pending")

    def size(self) -> int:
        return int(self._retry(lambda: self._client.xlen(self._key), "size"))

    def delete(self) -> None:
        """Drop the stream, its group and its dedupe keys (tests, `reset`)."""
        def op() -> None:
            keys = [self._key, *self._client.scan_iter(match=self._dedupe_prefix + "*")]
            self._client.delete(*keys)
            self._group_ready = False

        self._retry(op, "delete")

    def close(self) -> None:
        self._client.close()


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _payload(fields: dict[bytes, bytes]) -> dict[str, Any]:
    payload: dict[str, Any] = orjson.loads(fields[b"p"])
    return payload
