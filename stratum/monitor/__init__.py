"""Monitoring: the metric catalogue, JSON logs with request ids, traces, drift, alert rules."""

from stratum.monitor.alerts import Alert, AlertManager
from stratum.monitor.drift import (
    DriftMonitor,
    DriftReport,
    ReferenceProfile,
    drift_report,
    ks_2samp,
    psi,
)
from stratum.monitor.logging import request_context, setup_logging
from stratum.monitor.metrics import DriftGauges, metrics_endpoint, new_registry, render

__all__ = [
    "Alert",
    "AlertManager",
    "DriftGauges",
    "DriftMonitor",
    "DriftReport",
    "ReferenceProfile",
    "drift_report",
    "ks_2samp",
    "metrics_endpoint",
    "new_registry",
    "psi",
    "render",
    "request_context",
    "setup_logging",
]
