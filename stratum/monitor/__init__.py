"""Monitoring: Prometheus metrics, JSON logs with request ids, drift, alerts."""

from stratum.monitor.alerts import Alert, AlertManager, ThresholdRule, default_rules
from stratum.monitor.drift import (
    DriftMonitor,
    DriftReport,
    ReferenceProfile,
    drift_report,
    ks_2samp,
    psi,
)
from stratum.monitor.logging import request_context, setup_logging
from stratum.monitor.metrics import Metrics, metrics_endpoint, new_registry

__all__ = [
    "Alert",
    "AlertManager",
    "DriftMonitor",
    "DriftReport",
    "Metrics",
    "ReferenceProfile",
    "ThresholdRule",
    "default_rules",
    "drift_report",
    "ks_2samp",
    "metrics_endpoint",
    "new_registry",
    "psi",
    "request_context",
    "setup_logging",
]
