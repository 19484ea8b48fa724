"""The gateway's span of a request, made only while tracing is on (``monitor.otlp_endpoint``):
a child of the client's ``traceparent`` when it sent one, whose own context replaces that
header in what goes to the replica, so the replica's spans are its children (W3C trace
context). With tracing off the gateway's ``tracer`` is None and nothing here runs."""

from __future__ import annotations

from typing import Any

from stratum.gateway.call import Call, model_of
from stratum.monitor.tracing import Tracer


def start_request(tracer: Tracer, call: Call, request_id: bytes) -> Any:
    span = tracer.request("gateway.request", call.headers.get(b"traceparent"),
                          request_id.decode("latin-1"), **{
                              "http.request.method": call.method, "url.path": call.path,
                              "stratum.model": model_of(call.path) or ""})
    call.headers[b"traceparent"] = tracer.traceparent(span).encode()
    return span


def end_request(span: Any, status: int) -> None:
    Tracer.end(span, **{"http.response.status_code": status})
