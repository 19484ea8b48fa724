"""OpenTelemetry traces, off by default at no cost.

``tracer_for(settings.monitor, "replica")`` is None unless ``monitor.otlp_endpoint`` is
set; callers test ``tracer is None`` once per request and do nothing else, and this module
imports OpenTelemetry only inside ``Tracer()``, so a process with tracing off never loads
it (a test checks ``sys.modules``). With an endpoint, spans go to it over OTLP/HTTP in
batches (every ``monitor.trace_flush_ms``).

The spans of one request: ``gateway.request`` (its context travels to the replica in the
W3C ``traceparent`` header), ``replica.request`` with children ``replica.queue_wait``
(until its rows were taken into a batch), ``replica.batch`` (the batch's work for it) and
``replica.forward`` (the forward pass), and ``replica.capture_write`` (the request-log
write, one per flush, linked to each request it wrote). Every span carries the request id
as ``stratum.request_id`` (the capture write: ``stratum.request_ids``).

Times from ``time.perf_counter()`` are turned into the epoch nanoseconds spans need with
one offset taken at start-up (``epoch_ns``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from stratum.config.monitor import MonitorSettings
from stratum.errors import ConfigError

_OFFSET_NS = time.time_ns() - time.perf_counter_ns()
REQUEST_ID = "stratum.request_id"

# The request span a replica is serving, set only while tracing is on.
current_span: ContextVar[Any] = ContextVar("stratum_current_span", default=None)


def epoch_ns(perf_s: float) -> int:
    """``time.perf_counter()`` seconds as epoch nanoseconds."""
    return int(perf_s * 1e9) + _OFFSET_NS


class Tracer:
    """The spans Stratum makes, over an OpenTelemetry SDK tracer of its own."""

    def __init__(self, cfg: MonitorSettings, component: str) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        assert cfg.otlp_endpoint
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": f"stratum-{component}"}),
            sampler=ParentBased(TraceIdRatioBased(cfg.trace_sample_ratio)))
        # A queue for a few seconds of a busy replica's spans (the SDK's 2,048 drops spans
        # past ~2,000 requests/s); each export is one POST of up to 1,024 spans.
        self.provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=cfg.otlp_endpoint, headers=cfg.otlp_headers or None),
            schedule_delay_millis=cfg.trace_flush_ms, max_queue_size=16_384,
            max_export_batch_size=1024))
        self.tracer = self.provider.get_tracer("stratum")
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._server = trace.SpanKind.SERVER
        self._link = trace.Link

    def request(self, name: str, traceparent: str | bytes | None, request_id: str,
                **attributes: Any) -> Any:
        """Start the span of one request, a child of the caller's ``traceparent``."""
        ctx = None
        if traceparent:
            value = traceparent.decode("latin-1") if isinstance(traceparent, bytes) \
                else traceparent
            ctx = self._propagator.extract({"traceparent": value})
        return self.tracer.start_span(name, context=ctx, kind=self._server,
                                      attributes={REQUEST_ID: request_id, **attributes})

    def traceparent(self, span: Any) -> str:
        """The W3C header that makes the next hop's span a child of ``span``."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return carrier.get("traceparent", "")

    def child(self, parent: Any, name: str, start_s: float, end_s: float,
              **attributes: Any) -> None:
        """A finished child span of ``parent`` between two ``perf_counter`` times."""
        span = self.tracer.start_span(name, context=self._trace.set_span_in_context(parent),
                                      start_time=epoch_ns(start_s), attributes=attributes)
        span.end(end_time=epoch_ns(end_s))

    def linked(self, name: str, spans: Sequence[Any], start_s: float, end_s: float,
               **attributes: Any) -> None:
        """A finished root span linked to each of ``spans`` (work done for many requests)."""
        links = [self._link(s.get_span_context()) for s in spans]
        span = self.tracer.start_span(name, links=links, start_time=epoch_ns(start_s),
                                      attributes=attributes)
        span.end(end_time=epoch_ns(end_s))

    @staticmethod
    def end(span: Any, **attributes: Any) -> None:
        for key, value in attributes.items():
            span.set_attribute(key, value)
        span.end()

    def shutdown(self) -> None:
        """Export what is pending and stop (the SDK also does this at exit)."""
        self.provider.shutdown()


def tracer_for(cfg: MonitorSettings, component: str) -> Tracer | None:
    """A tracer when ``cfg.otlp_endpoint`` is set; None (tracing off) otherwise."""
    if not cfg.otlp_endpoint:
        return None
    try:
        return Tracer(cfg, component)
    except ImportError as exc:
        raise ConfigError(f"monitor.otlp_endpoint is set but OpenTelemetry is missing: {exc}",
                          hint="pip install 'stratum[tracing]', or unset "
                               "monitor.otlp_endpoint") from exc
