"""Every Prometheus metric Stratum exports, in one place: name, type, labels, help.

Names follow ``stratum_<component>_<what>_<unit>`` (component: ``gateway``, ``replica``,
``control``, ``learner``, ``train``; unit: ``seconds``, ``rows``, ``messages``, ``ratio``,
``total`` for counters, none for plain counts). The processes build their metrics from
these definitions (``MetricDef.create``), and the alert rules (``monitor.rules``), the
Grafana board (``monitor.dashboard``) and docs/monitoring.md name them from here, so a
rename is one edit that every consumer follows — and a test fails on a board or a rules
file that queries a name not defined here.

>>> GATEWAY_REQUESTS.name, GATEWAY_REQUESTS.labels
('stratum_gateway_requests_total', ('model', 'route', 'code'))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# ``*_created`` timestamps would double every scrape and no rule or panel reads them.
disable_created_metrics()

# Seconds: sub-millisecond batching up to multi-second timeouts.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)

Kind = Literal["counter", "gauge", "histogram"]
Metric = Counter | Gauge | Histogram


@dataclass(frozen=True)
class MetricDef:
    """One metric. ``name`` is the exposed name (counters end in ``_total``)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS

    @property
    def component(self) -> str:
        return self.name.split("_")[1]

    def series(self, suffix: str) -> str:
        """A histogram's ``_bucket``/``_sum``/``_count`` series."""
        assert self.kind == "histogram", self.name
        return f"{self.name}_{suffix}"

    def create(self, registry: CollectorRegistry) -> Metric:
        if self.kind == "counter":
            return Counter(self.name, self.help, self.labels, registry=registry)
        if self.kind == "gauge":
            return Gauge(self.name, self.help, self.labels, registry=registry)
        return Histogram(self.name, self.help, self.labels, buckets=self.buckets,
                         registry=registry)

    def counter(self, registry: CollectorRegistry) -> Counter:
        assert self.kind == "counter", self.name
        m = self.create(registry)
        assert isinstance(m, Counter)
        return m

    def gauge(self, registry: CollectorRegistry) -> Gauge:
        assert self.kind == "gauge", self.name
        m = self.create(registry)
        assert isinstance(m, Gauge)
        return m

    def histogram(self, registry: CollectorRegistry) -> Histogram:
        assert self.kind == "histogram", self.name
        m = self.create(registry)
        assert isinstance(m, Histogram)
        return m


def _c(name: str, help: str, *labels: str) -> MetricDef:
    return MetricDef(name, "counter", help, labels)


def _g(name: str, help: str, *labels: str) -> MetricDef:
    return MetricDef(name, "gauge", help, labels)


def _h(name: str, help: str, *labels: str,
       buckets: tuple[float, ...] = LATENCY_BUCKETS) -> MetricDef:
    return MetricDef(name, "histogram", help, labels, buckets)


# -- gateway: per request, labelled with the model (pool) it addressed ----------------------
GATEWAY_REQUESTS = _c("stratum_gateway_requests_total",
                      "Requests answered by the gateway; model is empty for its own routes",
                      "model", "route", "code")
GATEWAY_DURATION = _h("stratum_gateway_request_duration_seconds",
                      "End-to-end latency at the gateway", "model", "route")
GATEWAY_RETRIES = _c("stratum_gateway_retries_total", "Inferences sent again to another replica")
GATEWAY_RETRY_REFUSED = _c("stratum_gateway_retry_budget_exhausted_total",
                           "Retries refused by the retry budget")
GATEWAY_UPSTREAM_ERRORS = _c("stratum_gateway_upstream_errors_total",
                             "Failed attempts against a replica", "kind")
GATEWAY_SHADOW = _c("stratum_gateway_shadow_requests_total", "Mirrored requests", "outcome")
GATEWAY_REPLICAS = _g("stratum_gateway_replicas", "Replicas in the routing table")
GATEWAY_HEALTHY = _g("stratum_gateway_healthy_replicas", "Replicas taking traffic")
GATEWAY_HELD = _g("stratum_gateway_held_requests",
                  "Requests waiting for a replica of a deployment scaled to zero")
GATEWAY_RATELIMIT_FALLBACK = _c("stratum_gateway_ratelimit_fallback_total",
                                "Rate-limit checks decided by a less shared bucket: this "
                                "process's (table_full) or this host's (redis)", "reason")

# -- replica ----------------------------------------------------------------------------------
REPLICA_REQUESTS = _c("stratum_replica_requests_total", "HTTP requests by route and status",
                      "route", "code")
REPLICA_DURATION = _h("stratum_replica_request_duration_seconds",
                      "Time from request to response", "route", "code")
REPLICA_BATCH = _h("stratum_replica_batch_size_rows", "Rows per forward pass",
                   buckets=BATCH_BUCKETS)
REPLICA_BATCH_WAIT = _h("stratum_replica_batch_wait_seconds",
                        "How long the oldest request of each batch waited for it")
REPLICA_FORWARD = _h("stratum_replica_forward_duration_seconds",
                     "Time of one forward pass (one batch)")
REPLICA_QUEUE = _g("stratum_replica_queue_depth_rows", "Rows waiting for the next forward pass")
REPLICA_INFLIGHT = _g("stratum_replica_inflight_requests", "Requests being served")
REPLICA_VERSION = _g("stratum_replica_model_version", "Model version being served", "model")
REPLICA_SWAPS = _c("stratum_replica_swaps_total", "Hot swaps by outcome", "outcome")
REPLICA_FEEDBACK = _c("stratum_replica_feedback_total",
                      "Feedback items received, by outcome (accepted, duplicate)", "outcome")

# -- control plane ------------------------------------------------------------------------------
CONTROL_RECONCILE = _h("stratum_control_reconcile_duration_seconds",
                       "Time of one reconcile pass over every deployment")
CONTROL_RECONCILE_ERRORS = _c("stratum_control_reconcile_errors_total",
                              "Deployments whose reconcile raised", "deployment")
CONTROL_EVENTS = _c("stratum_control_events_total",
                    "Supervisor events (replica.crashed, replica.ready, ...)", "kind")
CONTROL_RESTARTS = _c("stratum_control_replica_restarts_total",
                      "Replicas and gateways replaced after they exited unasked",
                      "deployment", "process")
CONTROL_REPLICAS = _g("stratum_control_replicas",
                      "Replicas by state (starting, ready, draining)", "deployment", "state")
CONTROL_WANTED = _g("stratum_control_replicas_wanted", "Replicas the spec asks for",
                    "deployment")
CONTROL_READY = _g("stratum_control_replicas_ready", "Replicas ready", "deployment")
CONTROL_GATEWAYS = _g("stratum_control_gateways_live", "Gateways answering", "deployment")
CONTROL_DEPLOYMENTS = _g("stratum_control_deployments", "Deployments by status", "status")
CONTROL_LEADER = _g("stratum_control_leader", "1 while this instance leads, else 0")
CONTROL_TERM = _g("stratum_control_leader_term", "The leadership term this instance holds")
CONTROL_ALERTS = _c("stratum_control_alerts_total", "Alerts recorded as events, by rule", "rule")
CONTROL_FIRING = _g("stratum_control_alerts_firing",
                    "Subjects for which a rule holds now (built-in evaluator)", "rule")
CONTROL_SCRAPES = _c("stratum_control_scrapes_total",
                     "Scrapes of the deployment's processes by the built-in evaluator",
                     "component", "outcome")
CONTROL_AUDIT_PRUNED = _c("stratum_control_audit_pruned_total",
                          "Audit records deleted as older than control.audit_retention_days")

# -- online learner -------------------------------------------------------------------------
LEARNER_LAG = _g("stratum_learner_queue_lag_messages",
                 "Feedback messages in the queue not yet acked by the learner", "model")
LEARNER_CONSUMED = _c("stratum_learner_feedback_consumed_total",
                      "Feedback messages taken from the queue", "model")
LEARNER_APPLIED = _c("stratum_learner_feedback_applied_total",
                     "Feedback rows committed into an update", "model")
LEARNER_CHALLENGERS = _c("stratum_learner_challengers_total",
                         "Challengers judged, by decision (promoted, rejected)",
                         "model", "decision")
LEARNER_PROMOTIONS = _c("stratum_learner_promotions_total",
                        "Challengers promoted to the serving alias", "model")
LEARNER_UPDATE = _h("stratum_learner_update_duration_seconds",
                    "Fine-tune, judge and record one challenger", "model", buckets=SLOW_BUCKETS)
LEARNER_CHAMPION = _g("stratum_learner_champion_version", "The version the learner improves on",
                      "model")
LEARNER_ACCURACY = _g("stratum_learner_feedback_accuracy_ratio",
                      "Accuracy of the served predictions over the last feedback window",
                      "model")
LEARNER_HOLDOUT = _g("stratum_learner_champion_holdout_score",
                     "The champion's score on the held-out test split", "model")
LEARNER_PSI = _g("stratum_learner_drift_psi",
                 "PSI of the last input window against training (top 20 features)",
                 "model", "feature")
LEARNER_KS = _g("stratum_learner_drift_ks_statistic", "KS statistic of the last input window",
                "model", "feature")
LEARNER_DRIFTED = _g("stratum_learner_drift_features_drifted_ratio",
                     "Share of input features drifted in the last window", "model")
LEARNER_ALERTS = _c("stratum_learner_alerts_total", "Drift alerts the learner recorded", "rule")

# -- training progress, read from the store and exposed by the control plane ------------------
TRAIN_EPOCH = _g("stratum_train_epoch", "Epochs done of the run", "run", "model")
TRAIN_EPOCHS = _g("stratum_train_epochs", "Epochs the run asks for", "run", "model")
TRAIN_STEP = _g("stratum_train_step", "Optimizer steps done", "run", "model")
TRAIN_LOSS = _g("stratum_train_loss", "Last reported training loss", "run", "model")
TRAIN_RATE = _g("stratum_train_samples_per_second", "Last reported throughput", "run", "model")
TRAIN_RESTARTS = _g("stratum_train_restarts", "Times the worker group was restarted",
                    "run", "model")
TRAIN_RUNS = _g("stratum_train_runs", "Recent runs by status", "status")

CATALOG: tuple[MetricDef, ...] = tuple(v for v in dict(globals()).values()
                                       if isinstance(v, MetricDef))


def by_name() -> dict[str, MetricDef]:
    return {d.name: d for d in CATALOG}


def series_names() -> set[str]:
    """Every series name a scrape can show: histograms add _bucket, _sum and _count."""
    out = set()
    for d in CATALOG:
        if d.kind == "histogram":
            out |= {d.series("bucket"), d.series("sum"), d.series("count")}
        else:
            out.add(d.name)
    return out
