"""What a rate-limit check costs the gateway, per backend, against the in-process buckets
measured in the same run:

    .venv/bin/python bench/ratelimit.py                                  # no Redis row
    .venv/bin/python bench/ratelimit.py --redis redis://127.0.0.1:6379/0

Every check admits (the rate is far above what one process can ask), over 1,000 keys in
turn, as a gateway's clients would be. Rows: this process's dict (``RateLimiter.check``,
and through ``await take`` as ``Admission`` calls it); the table shared through a file
(``SharedLimiter``: a keyed hash, ``flock``, a probe of the mapped slots, ``flock``
again), by one process and by two processes at once on the same table (each process's
own time per check, with the lock contended); Redis (one Lua script per check, a round
trip on a connection from the pool). Each figure is the median of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from stratum.gateway.ratelimit import RateLimiter, SharedLimiter

RATE = 1e9  # never the limit: what is measured is the check
KEYS = [f"10.0.{i // 256}.{i % 256}" for i in range(1000)]


def per_check(check: Callable[[str], None], n: int) -> float:
    """Microseconds per call of ``check`` over ``n`` calls."""
    keys = KEYS
    t = time.perf_counter()
    for i in range(n):
        check(keys[i % 1000])
    return (time.perf_counter() - t) / n * 1e6


def per_take(lim: object, n: int) -> float:
    async def run() -> float:
        take = lim.take  # type: ignore[attr-defined]
        await take("warm-up")
        t = time.perf_counter()
        for i in range(n):
            await take(KEYS[i % 1000])
        return (time.perf_counter() - t) / n * 1e6
    return asyncio.run(run())


def _contended(path: str, n: int, start: object, out: object) -> None:
    lim = SharedLimiter(Path(path), RATE, RATE)
    start.wait()  # type: ignore[attr-defined]
    out.put(per_check(lim.check, n))  # type: ignore[attr-defined]


def two_processes(path: Path, n: int) -> float:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_contended, args=(str(path), n, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    return statistics.mean(got)


def redis_take(url: str, n: int) -> float:
    from stratum.gateway.ratelimit_redis import RedisBuckets

    async def run() -> float:
        buckets = RedisBuckets(url, 1.0, prefix=f"stratum-bench:{uuid.uuid4().hex[:8]}:")
        lim = buckets.limiter("bench", RATE, RATE, RateLimiter(RATE, RATE))
        await lim.take("warm-up")
        t = time.perf_counter()
        for i in range(n):
            await lim.take(KEYS[i % 1000])
        us = (time.perf_counter() - t) / n * 1e6
        if buckets.fallbacks:
            raise SystemExit(f"Redis at {url} did not answer every check")
        await buckets.close()
        return us
    return asyncio.run(run())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis", default=None, metavar="URL")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("-n", type=int, default=100_000, help="checks per round")
    args = p.parse_args()
    n = args.n
    folder = Path(tempfile.mkdtemp())
    shared = SharedLimiter(folder / "one.table", RATE, RATE)
    rows: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # interleaved, so drifting machine load hits every row
        rows.setdefault("in-process dict (check)", []).append(
            per_check(RateLimiter(RATE, RATE).check, n))
        rows.setdefault("in-process dict (await take)", []).append(
            per_take(RateLimiter(RATE, RATE), n))
        rows.setdefault("shared file, 1 process (check)", []).append(
            per_check(shared.check, n))
        rows.setdefault("shared file, 1 process (await take)", []).append(
            per_take(shared, n))
        rows.setdefault("shared file, 2 processes at once", []).append(
            two_processes(folder / "two.table", n))
        if args.redis:
            rows.setdefault("redis, 1 connection (await take)", []).append(
                redis_take(args.redis, max(2000, n // 20)))
    base = statistics.median(rows["in-process dict (check)"])
    print(f"{'backend':38} {'us/check':>9} {'x in-process':>13}   (median of {args.rounds})")
    for name, got in rows.items():
        us = statistics.median(got)
        print(f"{name:38} {us:9.2f} {us / base:13.1f}")


if __name__ == "__main__":
    main()
