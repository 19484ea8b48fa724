"""The replica's spans, made only while tracing is on (``monitor.otlp_endpoint``): the
request (a child of the gateway's, through ``traceparent``), its queue wait, its batch and
the forward pass, and each capture write linked to the requests it wrote
(``monitor.tracing`` describes them). With tracing off nothing here runs: the replica's
``tracer`` is None and the hot path tests only that.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from stratum.monitor.tracing import REQUEST_ID, Tracer, current_span
from stratum.serve.batcher import Batcher

_MAX_LINKS = 128  # per capture write: links past this are dropped, the write still traced


def start_request(tracer: Tracer, headers: dict[str, str], request_id: str, path: str,
                  deployment: str, replica: str | None) -> Any:
    """The span of one request; the routes find it in ``current_span`` (each ASGI request
    runs in a task of its own, so it needs no reset)."""
    span = tracer.request("replica.request", headers.get("traceparent"), request_id,
                          **{"url.path": path, "stratum.deployment": deployment,
                             "stratum.replica": replica or ""})
    current_span.set(span)
    return span


def end_request(span: Any, route: str, status: int, version: int | None) -> None:
    Tracer.end(span, **{"http.route": route, "http.response.status_code": status,
                        "stratum.version": version if version is not None else -1})


async def traced_submit(tracer: Tracer, batcher: Batcher, x: np.ndarray) -> np.ndarray:
    """``batcher.submit(x)`` with the queue wait, batch and forward spans of the request."""
    y, t = await batcher.submit_timed(x)
    span = current_span.get()
    if span is not None and span.is_recording():  # sampled out: no children either
        rid = span.attributes.get(REQUEST_ID, "")
        tracer.child(span, "replica.queue_wait", t.submitted, t.taken, **{REQUEST_ID: rid})
        tracer.child(span, "replica.batch", t.taken, t.done, **{
            REQUEST_ID: rid, "stratum.batch.rows": t.rows, "stratum.batch.requests": t.requests})
        tracer.child(span, "replica.forward", t.forward_start, t.forward_end, **{
            REQUEST_ID: rid, "stratum.batch.rows": t.rows})
    return y


class CaptureTraces:
    """The request spans whose inputs wait in the capture buffer, for the next write's
    links."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self._spans: deque[tuple[str, Any]] = deque(maxlen=_MAX_LINKS)

    def add(self, request_id: str) -> None:
        span = current_span.get()
        if span is not None and span.is_recording():
            self._spans.append((request_id, span))

    def write(self, flush: Callable[[], int]) -> int:
        """Run ``flush`` (the capture write) inside a ``replica.capture_write`` span."""
        taken = list(self._spans)
        self._spans.clear()
        t0 = time.perf_counter()
        rows = flush()
        if taken or rows:
            self.tracer.linked("replica.capture_write", [s for _, s in taken], t0,
                               time.perf_counter(), **{
                                   "stratum.request_ids": [r for r, _ in taken],
                                   "stratum.rows": rows})
        return rows
