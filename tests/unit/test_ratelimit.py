"""Rate limits that hold across processes: the shared table in a file under the home
(``gateway.ratelimit``) and the buckets in Redis (``gateway.ratelimit_redis``), hammered
by real OS processes (``tests/ratelimit_hammer.py``) for about two seconds each."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from stratum.config import Settings
from stratum.errors import RateLimitedError
from stratum.gateway import Gateway, GroupSpec, PoolSpec, RoutesSpec
from stratum.gateway.ratelimit import RateLimiter, SharedLimiter, TableError, table_path
from stratum.gateway.ratelimit_redis import RETRY_S, RedisBuckets
from stratum.gateway.traffic import PoolLimits
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]


def hammer(backend: str, where: str, keys: list[str], rate: float, burst: float,
           seconds: float = 2.0, env: dict[str, str] | None = None
           ) -> dict[str, list[dict[str, Any]]]:
    """One process per entry of ``keys``, all started together; their reports by key."""
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.ratelimit_hammer", backend, where, key, str(rate),
         str(burst), str(seconds)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env={**dict(__import__("os").environ), **(env or {})}) for key in keys]
    try:
        for p in procs:  # imported and connected: the timed part starts together
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        out: dict[str, list[dict[str, Any]]] = {}
        for key, p in zip(keys, procs, strict=True):
            stdout, _ = p.communicate(timeout=60)
            assert p.returncode == 0, stdout
            out.setdefault(key, []).append(json.loads(stdout.splitlines()[-1]))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def assert_one_bucket(runs: list[dict[str, Any]], rate: float, burst: float,
                      over: float = 1.0) -> None:
    """All processes together were admitted what one bucket allows between the first
    check and the last: ``burst + rate * elapsed``. A check reads its clock between the
    times taken around it, so at most the longest span plus ``over`` (rounding), at least
    the shortest less 2 + 1% (tokens made after the last check)."""
    admitted = sum(r["admitted"] for r in runs)
    longest = max(r["last"][1] for r in runs) - min(r["first"][0] for r in runs)
    shortest = max(r["last"][0] for r in runs) - min(r["first"][1] for r in runs)
    most, least = burst + rate * longest, burst + rate * shortest
    assert all(r["fallbacks"] == 0 and r["denied"] > 0 for r in runs), runs
    assert least - (2 + 0.01 * least) <= admitted <= most + over, (admitted, least, most,
                                                                    runs)


def test_processes_share_one_bucket_per_key_in_the_file(tmp_path: Path) -> None:
    """Three processes on key a, one on key b: a gets one bucket's worth, not three, and
    b its own whole bucket beside it."""
    path = table_path(tmp_path / "home", "deployment-tiny", 200.0, 100)
    got = hammer("file", str(path), ["a", "a", "a", "b"], rate=200.0, burst=100)
    assert_one_bucket(got["a"], 200.0, 100)
    assert_one_bucket(got["b"], 200.0, 100)
    # What per-process buckets would have let through: each process a whole bucket.
    assert sum(r["admitted"] for r in got["a"]) < 1.5 * (100 + 200 * 2.0)


def test_a_full_table_admits_from_the_process_own_bucket_and_reuses_refilled_slots(
        tmp_path: Path) -> None:
    now = [1000.0]
    seen: list[str] = []
    path = tmp_path / "t.table"
    a = SharedLimiter(path, 1.0, 2.0, slots=8, on_fallback=seen.append, clock=lambda: now[0])
    b = SharedLimiter(path, 1.0, 2.0, slots=8, clock=lambda: now[0])  # another gateway
    for i in range(8):  # eight keys, each bucket still refilling: every slot is live
        a.check(f"k{i}")
    assert a.fallbacks == 0 and seen == []
    a.check("late")
    a.check("late")
    assert a.fallbacks == 2 and seen == ["table_full", "table_full"]
    with pytest.raises(RateLimitedError):  # admitted, but still limited, by its own bucket
        a.check("late")
    assert a.fallbacks == 3
    b.check("k0")  # the live keys stay shared: k0 had one of its two tokens left
    with pytest.raises(RateLimitedError) as exc:
        a.check("k0")
    assert exc.value.message == "rate limit of 1 requests/s exceeded for k0"
    assert exc.value.hint == "retry after 1.00s"
    now[0] += 2.0  # every bucket full again: any slot may be taken, nothing was cleared
    a.check("new")
    b.check("new")
    with pytest.raises(RateLimitedError):
        a.check("new")
    assert a.fallbacks == 3


def test_the_shared_limiter_answers_as_the_in_process_one(tmp_path: Path) -> None:
    steps = (0, 0, 0, 0, 0.3, 0.2, 0, 5.0, 0, 0, 0, 0, 0.49, 0.01, 0.7)

    def outcomes(make: Any) -> list[str]:
        now = [50.0]
        lim = make(lambda: now[0])
        out = []
        for step in steps:
            now[0] += step
            try:
                lim.check("k")
                out.append("ok")
            except RateLimitedError as exc:
                out.append(str(exc.hint))
        return out

    local = outcomes(lambda clock: RateLimiter(2.0, 3.0, clock=clock))
    assert local[:5] == ["ok"] * 3 + ["retry after 0.50s", "retry after 0.20s"], local
    assert outcomes(lambda clock: SharedLimiter(tmp_path / "t.table", 2.0, 3.0,
                                                clock=clock)) == local
    # Checks at one instant (rates whose interval is no exact float): a drained bucket
    # stays drained, never mistaken for nonsense and refilled.
    for rate, burst in ((3.0, 7), (7.0, 3), (0.3, 11)):
        same = SharedLimiter(tmp_path / f"{rate}.table", rate, burst, clock=lambda: 123.456)
        admitted = 0
        for _ in range(50):
            try:
                same.check("k")
                admitted += 1
            except RateLimitedError:
                pass
        assert admitted == burst, (rate, burst, admitted)


def test_the_table_is_private_fixed_size_and_survives_a_reboot(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = table_path(home, "port-8000", 2.0, 3)
    assert path != table_path(home, "port-8000", 2.0, 4) != table_path(home, "port-8001", 2.0, 3)
    before = [1_000_000.0]
    lim = SharedLimiter(path, 2.0, 3, clock=lambda: before[0])
    size = path.stat().st_size
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    for i in range(3000):
        lim.check(f"client-{i}")
    for _ in range(3):
        lim.check("k")
    with pytest.raises(RateLimitedError):
        lim.check("k")
    assert path.stat().st_size == size == 64 + 16 * 16_384
    # After a reboot CLOCK_MONOTONIC starts again near 0: the arrival times left in the file
    # lie far in the future. They are not believed (the bucket is full), not waited out.
    after = SharedLimiter(path, 2.0, 3, clock=lambda: 12.0)
    for _ in range(3):
        after.check("k")
    with pytest.raises(RateLimitedError):
        after.check("k")
    (tmp_path / "other").write_bytes(b"not a table")
    with pytest.raises(TableError):
        SharedLimiter(tmp_path / "other", 2.0, 3)
    with pytest.raises(TableError):  # a table of another size is not mapped
        SharedLimiter(path, 2.0, 3, slots=1024)


def _gateway(settings: Settings, dead: str, name: str = "m") -> Gateway:
    limits = PoolLimits(rate_limit_per_s=0.01, rate_limit_burst=4)
    return Gateway(settings, parts={name: RoutesSpec(deployments={name: PoolSpec(
        groups=[GroupSpec(version=1, replicas=[dead])], limits=limits)})}, port=8000)


async def _codes(gws: list[Gateway], n: int, name: str = "m") -> list[int]:
    codes = []
    for i in range(n):  # alternately, as SO_REUSEPORT spreads fresh connections
        transport = httpx.ASGITransport(app=gws[i % len(gws)])
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            codes.append((await client.post(f"/v1/models/{name}:predict", json={})
                          ).status_code)
    for gw in gws:
        await gw.stop_background()
    return codes


def _fallbacks(gw: Gateway, reason: str) -> float:
    return gw.metrics.registry.get_sample_value(
        "stratum_gateway_ratelimit_fallback_total", {"reason": reason}) or 0.0


def test_two_gateways_of_one_home_share_a_deployments_limit(settings: Settings) -> None:
    """Two gateways of the same home and port: a deployment's burst of 4 is 4 in all
    (503: admitted, no replica answers), and so is the gateway-wide limit."""
    settings.home.mkdir(parents=True)
    dead = f"http://127.0.0.1:{free_port()}"
    gws = [_gateway(settings, dead), _gateway(settings, dead)]
    codes = asyncio.run(_codes(gws, 8))
    assert codes == [503] * 4 + [429] * 4, codes
    assert list((settings.home / "ratelimit").iterdir())  # the table lives in the home
    g = settings.gateway.model_copy(update={"rate_limit_per_s": 0.01, "rate_limit_burst": 3})
    wide = settings.model_copy(update={"gateway": g, "home": settings.home / "wide"})
    wide.home.mkdir()
    codes = asyncio.run(_codes([_gateway(wide, dead), _gateway(wide, dead)], 6))
    assert codes == [503] * 3 + [429] * 3, codes
    # No home: each process keeps its own buckets (a gateway started by hand elsewhere).
    bare = settings.model_copy(update={"home": settings.home / "none"})
    codes = asyncio.run(_codes([_gateway(bare, dead), _gateway(bare, dead)], 10))
    assert codes.count(503) == 8 and not (bare.home / "ratelimit").exists(), codes


# -- Redis ------------------------------------------------------------------------------------
def test_processes_share_one_bucket_per_key_in_redis(redis_url: str) -> None:
    prefix = f"stratum-test:{uuid.uuid4().hex}:"
    got = hammer("redis", redis_url, ["a", "a", "b"], rate=100.0, burst=50,
                 env={"STRATUM_TEST_RL_PREFIX": prefix})
    assert_one_bucket(got["a"], 100.0, 50, over=2.0)
    assert_one_bucket(got["b"], 100.0, 50, over=2.0)

    async def ttls() -> list[int]:
        import redis.asyncio as aredis

        async with aredis.Redis.from_url(redis_url) as r:
            names = [k async for k in r.scan_iter(match=prefix + "*")]
            return [await r.pttl(k) for k in names]

    # Every key expires once its bucket is full again (here 0.5 s), nothing is kept.
    assert all(0 < t <= 501 for t in asyncio.run(ttls()))
    time.sleep(0.6)
    assert asyncio.run(ttls()) == []


def test_an_unreachable_redis_fails_open_to_the_local_buckets(
        redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    with socket.socket() as hung:  # accepts connections (the backlog) but never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        port = hung.getsockname()[1]

        async def run() -> tuple[list[object], float, float]:
            buckets = RedisBuckets(f"redis://:pw@127.0.0.1:{port}/0", 0.1, seen.append)
            local = SharedLimiter(tmp_path / "t.table", 1.0, 3)
            lim = buckets.limiter("port-1", 1.0, 3, local)
            out: list[object] = []
            t0 = time.monotonic()
            for _ in range(5):
                try:
                    await lim.take("k")
                    out.append("ok")
                except RateLimitedError:
                    out.append(429)
                if len(out) == 1:
                    first = time.monotonic() - t0
            rest = time.monotonic() - t0 - first
            await buckets.close()
            return out, first, rest

        with caplog.at_level(logging.WARNING, "stratum.gateway.ratelimit_redis"):
            out, first, rest = asyncio.run(run())
    # The first check waited out the timeout; the next ones did not try Redis again yet.
    assert out == ["ok"] * 3 + [429] * 2, out
    assert first < 0.5 and rest < 0.05, (first, rest)
    assert seen == ["redis"] * 5
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "did not answer" in warned[0], warned
    assert "pw" not in warned[0] and ":***@" in warned[0]
    assert RETRY_S <= 5


def test_redis_answers_again_after_an_outage(redis_url: str, tmp_path: Path) -> None:
    async def run() -> list[object]:
        buckets = RedisBuckets(redis_url, 0.2, prefix=f"stratum-test:{uuid.uuid4().hex}:")
        lim = buckets.limiter("port-1", 1.0, 2, RateLimiter(1.0, 2))
        buckets.failed(OSError("pretend"))
        await lim.take("k")  # the local bucket decides meanwhile
        buckets.down_until = 0.0  # a retry is due
        out: list[object] = []
        for _ in range(3):  # Redis's bucket of 2 is fresh: the local check took none of it
            try:
                await lim.take("k")
                out.append("ok")
            except RateLimitedError:
                out.append(429)
        out.append(buckets.down)
        await buckets.close()
        return out

    assert asyncio.run(run()) == ["ok", "ok", 429, False]


def test_gateways_share_redis_and_fall_back_to_the_hosts_table(
        settings: Settings, redis_url: str) -> None:
    """With ``gateway.rate_limit_url`` two gateways share the deployment's bucket in Redis;
    with a Redis that is not there they still serve, sharing the host's table instead,
    and count every such check."""
    settings.home.mkdir(parents=True)
    dead = f"http://127.0.0.1:{free_port()}"
    name = f"m{uuid.uuid4().hex[:8]}"  # Redis outlives the test: a bucket of its own
    g = settings.gateway.model_copy(update={"rate_limit_url": redis_url})
    on_redis = settings.model_copy(update={"gateway": g})
    gws = [_gateway(on_redis, dead, name), _gateway(on_redis, dead, name)]
    assert asyncio.run(_codes(gws, 8, name)) == [503] * 4 + [429] * 4
    assert _fallbacks(gws[0], "redis") == _fallbacks(gws[1], "redis") == 0
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    g = settings.gateway.model_copy(update={"rate_limit_url": nowhere})
    no_redis = settings.model_copy(update={"gateway": g, "home": settings.home / "h2"})
    no_redis.home.mkdir()
    gws = [_gateway(no_redis, dead, name), _gateway(no_redis, dead, name)]
    assert asyncio.run(_codes(gws, 8, name)) == [503] * 4 + [429] * 4
    assert _fallbacks(gws[0], "redis") == _fallbacks(gws[1], "redis") == 4
