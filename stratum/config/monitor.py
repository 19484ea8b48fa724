"""The ``monitor`` section of the settings: traces, the alert rules' thresholds and windows,
and the learner's metrics port."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MonitorSettings(BaseModel):
    # OpenTelemetry traces go to this OTLP/HTTP endpoint (e.g.
    # http://127.0.0.1:4318/v1/traces). None, the default: tracing is off, and no process
    # imports OpenTelemetry or makes a span.
    otlp_endpoint: str | None = None
    otlp_headers: dict[str, str] = Field(default_factory=dict)
    trace_sample_ratio: float = Field(1.0, ge=0, le=1)
    # How long finished spans wait before they are exported in one batch.
    trace_flush_ms: int = Field(1000, ge=10, le=60_000)
    # The alert rules (stratum.monitor.rules), the same in Prometheus' rules file and in
    # the control plane's built-in evaluator, which scrapes every process of every
    # deployment (and the learners) each alert_interval_s and records alerts as events.
    alerts: bool = True
    alert_interval_s: float = Field(15.0, gt=0)
    alert_cooldown_s: float = Field(300.0, ge=0)  # one event per rule and subject
    alert_for_s: int = Field(60, ge=0)  # a condition must hold this long to fire
    rule_window_s: int = Field(300, ge=1)  # the rate window of error ratio and latency
    error_ratio_max: float = Field(0.05, gt=0, le=1)  # 5xx per request at the gateway
    latency_p99_target_s: float = Field(1.0, gt=0)  # gateway p99 over this fires
    learner_lag_max_messages: int = Field(1000, ge=1)  # feedback waiting for the learner
    # Predictions served over this window with no feedback at all: the loop starves.
    feedback_window_s: int = Field(1800, ge=1)
    # The learner's /metrics: 0 takes a free port (written to home/learners/NAME.json,
    # where the control plane finds it), None serves none.
    learner_metrics_host: str = "127.0.0.1"
    learner_metrics_port: int | None = Field(0, ge=0, le=65_535)
