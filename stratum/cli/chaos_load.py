"""The load ``stratum chaos`` puts on a deployment while it injects faults: a fixed number
of clients on the deployment's own gateway address, each sending one request at a time,
with a timeout, and every answer counted.

Bounded by construction: ``concurrency`` connections at most (one per client), one
request in flight per client, each with ``timeout_s``. A failed request (anything but a
2xx, or a transport error: refused, reset, timed out) is counted, and its client pauses
``PAUSE_AFTER_FAILURE_S`` before the next one, so an outage is counted in attempts at a
bounded rate rather than as a spin on refused connections.

With ``feedback`` on, every ``FEEDBACK_EVERY``-th answered prediction is followed by its
feedback (the predicted class as the label, the answer's ``x-request-id``): the path the
online learner and the queue are on. Feedback requests count as requests too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

PAUSE_AFTER_FAILURE_S = 0.05
FEEDBACK_EVERY = 4


@dataclass
class Tally:
    """What the clients saw; written by the load's thread, read by anyone (ints only)."""

    requests: int = 0
    failed: int = 0
    feedback: int = 0  # feedback requests among ``requests``
    reasons: Counter[str] = field(default_factory=Counter)  # failure → count
    versions: Counter[str] = field(default_factory=Counter)  # x-model-version of answers
    last_failure: float | None = None  # time.monotonic() of the last failed request
    last_feedback_ok: float | None = None

    def fail(self, reason: str) -> None:
        self.requests += 1
        self.failed += 1
        self.reasons[reason] += 1
        self.last_failure = time.monotonic()

    def top_reasons(self, n: int = 3) -> list[str]:
        return [f"{count} x {reason}" for reason, count in self.reasons.most_common(n)]


def _reason(exc: httpx.HTTPError) -> str:
    text = str(exc).splitlines()[0][:80] if str(exc) else ""
    return f"{type(exc).__name__}" + (f": {text}" if text else "")


def _label(answer: Any) -> Any:
    """The predicted label of a plain predict answer (``{"predictions": [...]}``)."""
    first = (answer.get("predictions") or [None])[0] if isinstance(answer, dict) else None
    return first.get("class") if isinstance(first, dict) else first


class Load:
    """``concurrency`` clients on ``url`` in a thread of their own until ``stop()``."""

    def __init__(self, url: str, name: str, body: dict[str, Any], *, concurrency: int,
                 headers: dict[str, str] | None = None, verify: Any = True,
                 feedback: bool = False, timeout_s: float = 10.0) -> None:
        self.url, self.name, self.body = url, name, body
        self.concurrency, self.feedback, self.timeout_s = concurrency, feedback, timeout_s
        self.headers, self.verify = headers or {}, verify
        self.tally = Tally()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> Tally:
        self._stop.set()
        self._thread.join(self.timeout_s + 30)
        if self._error is not None:
            raise RuntimeError(f"the load generator failed: {self._error!r}") from self._error
        return self.tally

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop(), in the caller's thread
            self._error = exc

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency,
                              max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, verify=self.verify,
                                     timeout=httpx.Timeout(self.timeout_s),
                                     headers=self.headers) as client:
            await asyncio.gather(*(self._client(client) for _ in range(self.concurrency)))

    async def _client(self, client: httpx.AsyncClient) -> None:
        t = self.tally
        sent = 0
        while not self._stop.is_set():
            try:
                r = await client.post(f"/v1/models/{self.name}:predict", json=self.body)
            except httpx.HTTPError as exc:
                t.fail(_reason(exc))
                await asyncio.sleep(PAUSE_AFTER_FAILURE_S)
                continue
            if not 200 <= r.status_code < 300:
                t.fail(f"{r.status_code} {r.text[:80]}")
                await asyncio.sleep(PAUSE_AFTER_FAILURE_S)
                continue
            t.requests += 1
            t.versions[r.headers.get("x-model-version", "?")] += 1
            sent += 1
            if self.feedback and sent % FEEDBACK_EVERY == 0:
                await self._feedback(client, r)

    async def _feedback(self, client: httpx.AsyncClient, answer: httpx.Response) -> None:
        t = self.tally
        rid = answer.headers.get("x-request-id")
        try:
            label = _label(answer.json())
        except ValueError:
            label = None
        if not rid or label is None:
            return
        t.feedback += 1
        try:
            r = await client.post(f"/v1/models/{self.name}/feedback",
                                  json={"request_id": rid, "label": label})
        except httpx.HTTPError as exc:
            t.fail(f"feedback {_reason(exc)}")
            return
        if 200 <= r.status_code < 300:
            t.requests += 1
            t.last_feedback_ok = time.monotonic()
        else:
            t.fail(f"feedback {r.status_code} {r.text[:80]}")


def sample_body(spec: dict[str, Any]) -> dict[str, Any]:
    """A valid one-sample predict body for a registered model spec: the raw features a
    tabular model with preprocessing takes, else the flat sample (``Signature`` takes both
    the shaped and the flat form)."""
    shape = [int(d) for d in spec.get("input_shape") or [1]]
    names = spec.get("feature_names")
    image = len(shape) == 3
    if names and not image:
        n = len(names)
    else:
        n = 1
        for d in shape:
            n *= d
    return {"instances": [[0.5] * n]}


__all__ = ["FEEDBACK_EVERY", "PAUSE_AFTER_FAILURE_S", "Load", "Tally", "sample_body"]
