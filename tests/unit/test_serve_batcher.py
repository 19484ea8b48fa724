"""The dynamic batcher: every request gets exactly its own rows, batches respect the
limit, a failing forward reaches every waiter, close() finishes what was submitted."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stratum.errors import NonFiniteOutputError
from stratum.serve.batcher import Batcher


def _forward(calls: list[int]):  # type: ignore[no-untyped-def]
    def fwd(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x[:, 0] * 10 + x[:, 1]  # depends on each row alone: a mix-up shows
    return fwd


async def _run(sizes: list[int], delays: list[float], max_batch: int, wait_ms: float,
               executor: ThreadPoolExecutor) -> tuple[list[np.ndarray], list[np.ndarray],
                                                      list[int]]:
    calls: list[int] = []
    b = Batcher(_forward(calls), max_batch_size=max_batch, max_wait_ms=wait_ms,
                executor=executor)
    b.start()
    inputs = [np.column_stack([np.full(n, i, dtype=np.float32),
                               np.arange(n, dtype=np.float32)]) for i, n in enumerate(sizes)]

    async def one(x: np.ndarray, delay: float) -> np.ndarray:
        await asyncio.sleep(delay)
        return await b.submit(x)

    outs = await asyncio.gather(*(one(x, d) for x, d in zip(inputs, delays, strict=True)))
    await b.close()
    return inputs, list(outs), calls


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=st.lists(st.tuples(st.integers(1, 9), st.sampled_from([0.0, 0.0, 0.0005, 0.002])),
                  min_size=1, max_size=40),
    max_batch=st.integers(1, 24),
    wait_ms=st.sampled_from([0.0, 1.0]),
)
def test_every_request_gets_exactly_its_own_result(
    reqs: list[tuple[int, float]], max_batch: int, wait_ms: float,
) -> None:
    sizes = [n for n, _ in reqs]
    with ThreadPoolExecutor(1) as ex:
        inputs, outs, calls = asyncio.run(
            _run(sizes, [d for _, d in reqs], max_batch, wait_ms, ex))
    for x, y in zip(inputs, outs, strict=True):
        np.testing.assert_array_equal(y, x[:, 0] * 10 + x[:, 1])
    assert sum(calls) == sum(sizes)  # each row computed exactly once
    # A batch only exceeds the limit when one request alone is bigger than it.
    assert all(c <= max(max_batch, max(sizes)) for c in calls)


def test_concurrent_requests_share_forward_passes() -> None:
    with ThreadPoolExecutor(1) as ex:
        _, _, calls = asyncio.run(_run([1] * 64, [0.0] * 64, 16, 2.0, ex))
    assert len(calls) == 4 and calls == [16, 16, 16, 16]


def test_a_failing_forward_reaches_every_waiter_and_the_batcher_goes_on() -> None:
    async def main() -> None:
        state = {"fail": True}

        def fwd(x: np.ndarray) -> np.ndarray:
            if state["fail"]:
                raise ValueError("boom")
            return x

        b = Batcher(fwd, max_batch_size=8, max_wait_ms=1.0)
        b.start()
        res = await asyncio.gather(*(b.submit(np.ones((1, 2))) for _ in range(3)),
                                   return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in res)
        state["fail"] = False
        np.testing.assert_array_equal(await b.submit(np.ones((2, 2))), np.ones((2, 2)))
        await b.close()

    asyncio.run(main())


def test_close_finishes_submitted_work_then_refuses_more() -> None:
    async def main() -> None:
        b = Batcher(lambda x: x + 1, max_batch_size=4, max_wait_ms=50.0)
        b.start()
        pending = [asyncio.ensure_future(b.submit(np.zeros((1, 1)))) for _ in range(6)]
        await asyncio.sleep(0)
        await b.close()
        assert [float(p.result()[0, 0]) for p in pending] == [1.0] * 6
        with pytest.raises(RuntimeError):
            await b.submit(np.zeros((1, 1)))

    asyncio.run(main())


def test_the_wait_for_company_is_paid_only_when_requests_come_together() -> None:
    """One request at a time never waits max_wait_ms; once a batch held several requests,
    an idle batcher waits for company again."""
    async def main() -> tuple[list[float], list[int]]:
        calls: list[int] = []
        b = Batcher(_forward(calls), max_batch_size=64, max_wait_ms=200.0)
        b.start()
        x = np.ones((1, 2), dtype=np.float32)
        lone = []
        for _ in range(3):  # sequential: no company ever
            t0 = time.perf_counter()
            await b.submit(x)
            lone.append(time.perf_counter() - t0)
        await asyncio.gather(*(b.submit(x) for _ in range(4)))  # together: one batch
        t0 = time.perf_counter()
        await asyncio.gather(b.submit(x), _later(b.submit(x), 0.05))
        lone.append(time.perf_counter() - t0)
        await b.close()
        return lone, calls

    times, calls = asyncio.run(main())
    assert max(times[:3]) < 0.1, times  # never the 200 ms wait
    assert calls[:4] == [1, 1, 1, 4]
    # After a shared batch the next idle start waits, so a request 50 ms later joins it.
    assert calls[4:] == [2] and times[3] >= 0.05, (calls, times)


async def _later(coro, delay: float):  # type: ignore[no-untyped-def]
    await asyncio.sleep(delay)
    return await coro


def test_non_finite_outputs_fail_only_their_own_request_with_a_422() -> None:
    """One check per batch; a request whose rows came back NaN gets a 422 naming its own
    instance indices, and the requests sharing its forward pass are served."""
    async def main() -> list[object]:
        def fwd(x: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore", invalid="ignore"):
                z = x * np.float32(1e30)  # 1e9 → inf in FP32
                return np.stack([z[:, 0] - z[:, 0], x[:, 0]], axis=1)  # inf - inf = NaN

        b = Batcher(fwd, max_batch_size=16, max_wait_ms=0.0)
        b.start()
        xs = [np.array([[1.0], [2.0]], np.float32), np.array([[3.0], [1e9], [1e9]], np.float32),
              np.array([[4.0]], np.float32)]
        res = await asyncio.gather(*(b.submit(x) for x in xs), return_exceptions=True)
        await b.close()
        return res

    res = asyncio.run(main())
    assert isinstance(res[1], NonFiniteOutputError) and res[1].http_status == 422
    assert "non-finite outputs for instance(s) [1, 2]" in str(res[1])
    for ok, first in ((res[0], [1.0, 2.0]), (res[2], [4.0])):
        assert isinstance(ok, np.ndarray) and np.isfinite(ok).all()
        np.testing.assert_array_equal(ok[:, 1], first)
