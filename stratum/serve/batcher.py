"""Dynamic batching: coalesce concurrent requests into one forward pass.

Requests arrive on the event loop as arrays of ``n`` rows. The loop below takes whatever
is pending (up to ``max_batch_size`` rows), optionally waits up to ``max_wait_ms`` for
company when the batch is small, runs ONE forward pass in a worker thread — so the event
loop keeps parsing the next requests while the model computes — and hands every request
exactly its own rows of the result.

Under load no timer is needed: requests pile up while the previous batch computes, and
the next batch takes them all. ``max_wait_ms`` only matters for a lightly loaded replica,
where it trades a little latency for bigger batches — and only once the last batch showed
that requests do come together: a client sending one request at a time would otherwise
pay the whole wait on every request for company that never comes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from stratum.data.signature import few, non_finite_rows
from stratum.errors import NonFiniteOutputError

log = logging.getLogger(__name__)

Forward = Callable[[np.ndarray], np.ndarray]


@dataclass(slots=True)
class _Item:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]
    t: float  # perf_counter() at submit
    timing: Timing | None = None  # filled for ``submit_timed`` (a traced request)


@dataclass(slots=True)
class Timing:
    """Where a request's time went in the batcher (``perf_counter`` seconds): queued at
    ``submitted``, taken into a batch of ``rows`` rows (``requests`` requests) at ``taken``,
    forward pass from ``forward_start`` to ``forward_end``, rows handed back at ``done``."""

    submitted: float = 0.0
    taken: float = 0.0
    forward_start: float = 0.0
    forward_end: float = 0.0
    done: float = 0.0
    rows: int = 0
    requests: int = 0


class Batcher:
    """``await batcher.submit(x)`` returns ``forward(x)``, computed inside a shared batch.

    ``on_batch(rows, waited_s, forward_s)`` is called once per forward pass (metrics: its
    rows, how long its oldest request waited, the pass's time); ``queue_depth`` is the
    number of rows waiting.
    """

    def __init__(
        self, forward: Forward, *, max_batch_size: int, max_wait_ms: float,
        executor: Executor | None = None,
        on_batch: Callable[[int, float, float], None] | None = None,
    ) -> None:
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.executor = executor
        self.on_batch = on_batch
        self.queue_depth = 0
        self._pending: deque[_Item] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._only_when_full = False
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._company = False  # did the last forward pass serve more than one request?

    # -- public ---------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Queue ``x`` (n rows) and wait for its n rows of output."""
        if self._closing or self._task is None:
            raise RuntimeError("batcher is not running")
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(x, fut, time.perf_counter()))
        self.queue_depth += len(x)
        if not self._only_when_full or self.queue_depth >= self.max_batch_size:
            self._wake()
        return await fut

    async def submit_timed(self, x: np.ndarray) -> tuple[np.ndarray, Timing]:
        """``submit``, also saying where the time went (for a traced request's spans)."""
        if self._closing or self._task is None:
            raise RuntimeError("batcher is not running")
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        timing = Timing()
        item = _Item(x, fut, time.perf_counter(), timing)
        timing.submitted = item.t
        self._pending.append(item)
        self.queue_depth += len(x)
        if not self._only_when_full or self.queue_depth >= self.max_batch_size:
            self._wake()
        return await fut, timing

    async def close(self) -> None:
        """Finish everything already submitted, then stop."""
        self._closing = True
        self._wake()
        if self._task is not None:
            await self._task

    # -- the loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        busy = False  # did a pass just finish? then whatever is pending has waited already
        while True:
            if not self._pending:
                if self._closing:
                    return
                busy = False
                await self._sleep(loop, None, only_when_full=False)
                continue
            if (not busy and self._company and self.max_wait_s > 0
                    and self.queue_depth < self.max_batch_size):
                # An idle replica got its first request: give others a moment to join.
                await self._sleep(loop, self.max_wait_s, only_when_full=True)
            await self._compute(loop, self._take())
            busy = True

    async def _sleep(self, loop: asyncio.AbstractEventLoop, timeout: float | None, *,
                     only_when_full: bool) -> None:
        """Sleep until submit() wakes us (on any request, or only once the batch is full)
        or ``timeout`` passes."""
        self._wakeup = loop.create_future()
        self._only_when_full = only_when_full
        timer = loop.call_later(timeout, self._wake) if timeout is not None else None
        try:
            await self._wakeup
        finally:
            if timer is not None:
                timer.cancel()
            self._wakeup = None
            self._only_when_full = False

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _take(self) -> list[_Item]:
        """Pop pending items up to max_batch_size rows (always at least one item)."""
        batch = [self._pending.popleft()]
        rows = len(batch[0].x)
        while self._pending and rows + len(self._pending[0].x) <= self.max_batch_size:
            item = self._pending.popleft()
            batch.append(item)
            rows += len(item.x)
        self.queue_depth -= rows
        return batch

    async def _compute(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        self._company = len(batch) > 1
        xs = [it.x for it in batch]
        taken = time.perf_counter()
        try:
            y, finite, t0, t1 = await loop.run_in_executor(self.executor, _stack_and_forward,
                                                           self.forward, xs)
        except Exception as exc:  # every waiter must hear about the failure
            log.exception("forward pass failed for a batch of %d requests", len(batch))
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(y), taken - batch[0].t, t1 - t0)
        start = 0
        for it in batch:
            n = len(it.x)
            if not it.future.done():  # a cancelled client leaves a done future behind
                rows = y[start:start + n]
                bad = None if finite else non_finite_rows(rows)
                if bad:  # only the requests whose own rows went bad fail
                    it.future.set_exception(NonFiniteOutputError(
                        f"the model produced non-finite outputs for instance(s) {few(bad)}; "
                        "inputs may be out of range",
                        hint="send inputs within the range the model was trained on"))
                else:
                    it.future.set_result(rows)
            if it.timing is not None:
                _record(it.timing, taken, t0, t1, len(y), len(batch))
            start += n


def _record(timing: Timing, taken: float, t0: float, t1: float, rows: int,
            requests: int) -> None:
    timing.taken, timing.forward_start, timing.forward_end = taken, t0, t1
    timing.done, timing.rows, timing.requests = time.perf_counter(), rows, requests


def _stack_and_forward(forward: Forward, xs: list[np.ndarray]
                       ) -> tuple[np.ndarray, bool, float, float]:
    """The batch's output, whether all of it is finite (one check per batch on the worker
    thread, so the per-request detail is worked out only when it fails), and when the
    forward pass started and ended."""
    x = xs[0] if len(xs) == 1 else np.concatenate(xs)
    t0 = time.perf_counter()
    y = forward(x)
    t1 = time.perf_counter()
    if len(y) != len(x):
        raise RuntimeError(f"forward returned {len(y)} rows for {len(x)} inputs")
    return y, y.dtype.kind not in "fc" or bool(np.isfinite(y).all()), t0, t1
