"""Traces from real processes: a replica and a gateway with ``monitor.otlp_endpoint`` set
export over OTLP/HTTP to a small receiver started here, and one request's spans form one
trace — the gateway's (a child of the client's ``traceparent``), the replica's below it
(W3C ``traceparent`` on the forwarded request), its queue wait, batch and forward pass —
and the capture write links back to the requests it stored."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from stratum.config import load_settings
from stratum.config.monitor import MonitorSettings
from stratum.store import Store
from tests.integration.gateway_fixtures import SAMPLE, gateway, register_tiny, replica
from tests.services import free_port

pytestmark = pytest.mark.integration

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace endpoint that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        spans, lock = self.spans, self.lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                req = ExportTraceServiceRequest.FromString(body)
                with lock:
                    for rs in req.resource_spans:
                        service = next(a.value.string_value for a in rs.resource.attributes
                                       if a.key == "service.name")
                        for ss in rs.scope_spans:
                            spans.extend(_span(s, service) for s in ss.spans)
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["name"] == name]


def _span(s: Any, service: str) -> dict[str, Any]:
    attrs = {}
    for a in s.attributes:
        v = a.value
        kind = v.WhichOneof("value")
        attrs[a.key] = ([x.string_value for x in v.array_value.values]
                        if kind == "array_value" else getattr(v, kind))
    return {"name": s.name, "service": service, "trace": s.trace_id.hex(),
            "id": s.span_id.hex(), "parent": s.parent_span_id.hex(), "attrs": attrs,
            "links": [(ln.trace_id.hex(), ln.span_id.hex()) for ln in s.links],
            "start": s.start_time_unix_nano, "end": s.end_time_unix_nano}


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Receiver]]:
    tmp = tmp_path_factory.mktemp("traces")
    receiver = Receiver()
    settings = load_settings(home=tmp / "home", monitor=MonitorSettings(
        otlp_endpoint=receiver.url, trace_flush_ms=100))
    store = Store.open(settings)
    register_tiny(store, "tiny")
    store.close()
    try:
        with replica(settings, "tiny@1", tmp / "replica.log") as url, \
                gateway(settings, [url], tmp / "gateway.log") as (gw, _):
            yield gw, receiver
    finally:
        receiver.server.shutdown()


def _eventually(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, "spans did not arrive"
        time.sleep(0.2)
    return got


def test_one_trace_per_request_from_gateway_to_forward_pass(
        traced: tuple[str, Receiver]) -> None:
    gw, receiver = traced
    rids = []
    with httpx.Client(base_url=gw, timeout=30) as c:
        for i in range(3):
            headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"} if i == 0 else {}
            r = c.post("/v1/models/tiny:predict", json=SAMPLE, headers=headers)
            assert r.status_code == 200, r.text
            rids.append(r.headers["x-request-id"])

    def complete() -> bool:
        done = {s["attrs"].get("stratum.request_id") for s in receiver.named("replica.forward")}
        written = {r for s in receiver.named("replica.capture_write")
                   for r in s["attrs"].get("stratum.request_ids", [])}
        return set(rids) <= done and set(rids) <= written

    _eventually(complete)
    for i, rid in enumerate(rids):
        (g,) = [s for s in receiver.named("gateway.request")
                if s["attrs"]["stratum.request_id"] == rid]
        assert g["service"] == "stratum-gateway" and g["attrs"]["stratum.model"] == "tiny"
        assert g["attrs"]["http.response.status_code"] == 200
        if i == 0:  # the client's trace goes on through the gateway
            assert (g["trace"], g["parent"]) == (CLIENT_TRACE, CLIENT_SPAN)
        else:
            assert g["parent"] == "" and g["trace"] != CLIENT_TRACE
        (r,) = [s for s in receiver.named("replica.request")
                if s["attrs"]["stratum.request_id"] == rid]
        assert r["service"] == "stratum-replica"
        assert (r["trace"], r["parent"]) == (g["trace"], g["id"])  # traceparent forwarded
        assert r["attrs"]["http.route"] == "/v1/models/{name}:predict"
        assert g["start"] <= r["start"] <= r["end"] <= g["end"]
        kids = {s["name"]: s for s in receiver.spans
                if s["parent"] == r["id"] and s["trace"] == r["trace"]}
        assert set(kids) == {"replica.queue_wait", "replica.batch", "replica.forward"}
        wait, batch, fwd = (kids[n] for n in ("replica.queue_wait", "replica.batch",
                                              "replica.forward"))
        assert r["start"] <= wait["start"] <= wait["end"] <= batch["start"] + 1
        assert batch["start"] <= fwd["start"] <= fwd["end"] <= batch["end"] <= r["end"]
        assert fwd["attrs"]["stratum.batch.rows"] >= 1
        writes = [s for s in receiver.named("replica.capture_write")
                  if rid in s["attrs"]["stratum.request_ids"]]
        assert len(writes) == 1 and (r["trace"], r["id"]) in writes[0]["links"]

