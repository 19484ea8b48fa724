"""``python -m tests.ratelimit_hammer BACKEND WHERE KEY RATE BURST SECONDS``: one process
taking tokens for KEY as fast as it can from a shared limiter (``file``: the table at
WHERE; ``redis``: the Redis URL WHERE, with ``STRATUM_TEST_RL_PREFIX`` as key prefix).
It prints ``ready`` once imported, starts on a line from stdin, and ends with one JSON
line: how many checks were admitted and denied, and the monotonic times just before and
just after its first and its last check (each check reads its clock in between)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from stratum.errors import RateLimitedError
from stratum.gateway.ratelimit import RateLimiter, SharedLimiter


async def _hammer(take: Callable[[str], Awaitable[None]], key: str,
                  seconds: float) -> dict[str, object]:
    admitted = denied = 0
    times: list[float] = []
    end = time.monotonic() + seconds
    before = after = 0.0
    while after < end:
        before = time.monotonic()
        try:
            await take(key)
            admitted += 1
        except RateLimitedError:
            denied += 1
        after = time.monotonic()
        if not times:
            times += [before, after]
    return {"admitted": admitted, "denied": denied, "first": times, "last": [before, after]}


async def _file(where: str, key: str, rate: float, burst: float,
                seconds: float) -> dict[str, object]:
    lim = SharedLimiter(Path(where), rate, burst)

    async def take(k: str) -> None:
        lim.check(k)

    return {**await _hammer(take, key, seconds), "fallbacks": lim.fallbacks}


async def _redis(where: str, key: str, rate: float, burst: float,
                 seconds: float) -> dict[str, object]:
    from stratum.gateway.ratelimit_redis import RedisBuckets

    buckets = RedisBuckets(where, 0.5, prefix=os.environ["STRATUM_TEST_RL_PREFIX"])
    lim = buckets.limiter("hammer", rate, burst, RateLimiter(rate, burst))
    await lim.take("warm-up")  # the connection, outside the timed part
    out = await _hammer(lim.take, key, seconds)
    await buckets.close()
    return {**out, "fallbacks": buckets.fallbacks}


def main() -> None:
    backend, where, key, rate, burst, seconds = sys.argv[1:7]
    print("ready", flush=True)
    sys.stdin.readline()
    args = (where, key, float(rate), float(burst), float(seconds))
    out = asyncio.run(_file(*args) if backend == "file" else _redis(*args))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
