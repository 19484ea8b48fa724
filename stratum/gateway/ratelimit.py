"""Token buckets per key, kept where every gateway of a deployment sees them.

A port can have several gateway processes (``deploy --gateways N``, SO_REUSEPORT), and a
client spreading its connections reaches all of them; buckets kept in each process would
let it through N times the rate. So, by where the gateway runs:

- ``RateLimiter``: this process's own dict. Only for a gateway with no home (and as the
  fallback below).
- ``SharedLimiter`` (the embedded default): one fixed-size table per limiter in a file
  under ``<home>/ratelimit/``, memory-mapped by every gateway of the host, every check
  under an exclusive ``flock`` held for a few microseconds. A slot is a 64-bit keyed hash
  of the key and the bucket's *theoretical arrival time* (GCRA: the same admissions as a
  token bucket of ``rate`` and ``burst``, in one number). The clock is
  ``time.monotonic()``, CLOCK_MONOTONIC, one clock for all processes of a Linux host.
- ``ratelimit_redis.RedisLimiter`` (``gateway.rate_limit_url``): the same GCRA in one Lua
  script on a Redis every host's gateways share.

The table is open-addressed over a short probe window. A slot whose bucket is full again
(its arrival time is past) says nothing a fresh bucket would not, so it is reused and the
table never needs clearing. When no slot is free within the window (more keys active at
once than the table holds), the key is admitted by this process's own bucket instead of
failing the request, and that is counted (``on_fallback``).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import re
import struct
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from stratum.errors import RateLimitedError

log = logging.getLogger(__name__)

# Header: magic, slot count, reserved, the salt of the key hash (random per table, so a
# client cannot pick keys that crowd one probe window), padded to 64 bytes.
_HEADER = struct.Struct("<8sII16s")
_HEADER_SIZE = 64
_MAGIC = b"STRRL\x00\x00\x01"
_SLOT = struct.Struct("<Qd")  # key hash (0: never used), theoretical arrival time
SLOTS = 16_384  # 256 KiB a table: keys active at once, per limiter
PROBE = 8
# A GCRA comparison on sums of floats; admissions a nanosecond early are not a leak.
_EPS = 1e-9
# An arrival time further on than a full drain plus this is nonsense (one from before a
# reboot, when CLOCK_MONOTONIC started again), read as a full bucket; the margin keeps a
# drained bucket, stored up to _EPS past the drain, from ever being read as one.
_SLACK = 1e-3

OnFallback = Callable[[str], None]


def depth(rate: float, burst: float | None) -> float:
    """A bucket's depth: ``burst``, else one second's worth of ``rate`` (at least 1)."""
    return burst if burst is not None else max(1.0, rate)


class RateLimiter:
    """One token bucket per key in this process: ``rate`` tokens per second, ``burst``
    deep."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = depth(rate, burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, key: str) -> None:
        """Take one token for ``key`` or raise RateLimitedError (429)."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise limited(self.rate, key, (1.0 - tokens) / self.rate)
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:
            self._buckets.clear()

    async def take(self, key: str) -> None:
        """``check`` for callers that also await Redis (``Admission``)."""
        self.check(key)


def limited(rate: float, key: str, wait: float) -> RateLimitedError:
    return RateLimitedError(f"rate limit of {rate:g} requests/s exceeded for {key}",
                            hint=f"retry after {wait:.2f}s")


class TableError(OSError):
    """A table file that is not one of ours (another size, another format)."""


class SharedLimiter:
    """The buckets of one limiter, shared by the processes of this host through ``path``."""

    def __init__(self, path: Path, rate: float, burst: float | None = None, *,
                 slots: int = SLOTS, on_fallback: OnFallback | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if slots <= 0 or slots & (slots - 1):
            raise ValueError(f"slots must be a power of two, not {slots}")
        self.rate = rate
        self.burst = depth(rate, burst)
        self.path, self.clock = path, clock
        self._interval = 1.0 / rate
        # How far past now a key's arrival time may run: ``burst`` requests' worth.
        self._span = self.burst * self._interval
        self._mask = slots - 1
        self._fd, self._salt = _open_table(path, slots)
        try:
            self._map = mmap.mmap(self._fd, _HEADER_SIZE + slots * _SLOT.size)
        except BaseException:
            os.close(self._fd)
            raise
        # A limiter dropped with its deployment's old rate closes its file with it.
        self._closed = weakref.finalize(self, _close, self._map, self._fd)
        self._local = RateLimiter(rate, burst, clock)
        self._on_fallback = on_fallback
        self.fallbacks = 0
        self._warned = -3600.0

    def check(self, key: str) -> None:
        """Take one token for ``key`` from the shared table or raise RateLimitedError."""
        h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, key=self._salt)
                           .digest(), "little") or 1
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            # Read under the lock: arrival times then only grow, in every process.
            wait = self._take(h, self.clock())
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        if wait is None:
            self._fell_back()
            self._local.check(key)
        elif wait > 0.0:
            raise limited(self.rate, key, wait)

    async def take(self, key: str) -> None:
        self.check(key)

    def _take(self, h: int, now: float) -> float | None:
        """0.0 when admitted, the seconds to wait when not, None when the window is full."""
        m, mask, span = self._map, self._mask, self._span
        ahead = now + span + _SLACK
        start, found, spare, tat = h & mask, -1, -1, now
        for i in range(PROBE):
            at = _HEADER_SIZE + ((start + i) & mask) * _SLOT.size
            owner, tat = _SLOT.unpack_from(m, at)
            if owner == h:
                found = at
                break
            if owner == 0:  # never used: the key is not further on (it would be here)
                spare = at if spare < 0 else spare
                break
            # Full again, or nonsense (a time from before a reboot, NaN): reusable.
            if spare < 0 and not now < tat <= ahead:
                spare = at
        if found < 0:
            if spare < 0:
                return None
            found, tat = spare, now
        elif not now < tat <= ahead:
            tat = now
        new = tat + self._interval
        if new - now > span + _EPS:
            return new - now - span
        _SLOT.pack_into(m, found, h, new)
        return 0.0

    def _fell_back(self) -> None:
        self.fallbacks += 1
        if self._on_fallback is not None:
            self._on_fallback("table_full")
        now = time.monotonic()
        if now - self._warned > 60.0:
            self._warned = now
            log.warning("rate-limit table %s is full (%d keys active at once); keys that "
                        "find no slot are limited by this gateway's own buckets",
                        self.path, self._mask + 1)

    def close(self) -> None:
        self._closed()


def _close(table: mmap.mmap, fd: int) -> None:
    table.close()
    os.close(fd)


def _open_table(path: Path, slots: int) -> tuple[int, bytes]:
    """Open (or make, 0600) the table file; returns its descriptor and the hash salt."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    size = _HEADER_SIZE + slots * _SLOT.size
    try:
        # Under the lock: the first of several gateways starting together writes the
        # header, the others read it.
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            head = os.pread(fd, _HEADER.size, 0)
            if len(head) == _HEADER.size and head[:8] == _MAGIC:
                _, have, _, salt = _HEADER.unpack(head)
                if have != slots or os.fstat(fd).st_size > size:
                    raise TableError(f"{path} holds {have} slots, not {slots}")
            elif any(head):
                raise TableError(f"{path} is not a rate-limit table")
            else:
                salt = os.urandom(16)
                os.pwrite(fd, _HEADER.pack(_MAGIC, slots, 0, salt), 0)
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # sparse: pages are only made when keys land there
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    except BaseException:
        os.close(fd)
        raise
    return fd, salt


def table_path(home: Path, label: str, rate: float, burst: float | None) -> Path:
    """The file of one limiter: ``label`` (``port-8000``, ``deployment-tiny``) in a
    readable form plus a digest of the exact label, rate and burst."""
    exact = f"{label}\0{rate!r}\0{burst!r}\0{SLOTS}".encode()
    digest = hashlib.blake2b(exact, digest_size=8).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:64]
    return home / "ratelimit" / f"{safe}-{digest}.table"


__all__ = ["PROBE", "SLOTS", "RateLimiter", "SharedLimiter", "TableError", "depth",
           "limited", "table_path"]
