"""The Grafana board (docs/grafana-dashboard.json), generated from the metric catalogue so
that every query names a metric some process exports (``python -m stratum.monitor.export``
writes it; a test fails when the committed file differs, and the Prometheus test runs every
query against a live deployment and requires data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stratum.monitor import catalog as c

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
MODEL = 'model=~"$model"'
FIVE = '"5.."'  # status codes of server errors


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    width: int = 12


def _rate(d: c.MetricDef, by: str, match: str = "", window: str = "1m") -> str:
    sel = f"{d.name}{{{match}}}" if match else d.name
    return f"sum by ({by}) (rate({sel}[{window}]))"


def _quantile(q: float, d: c.MetricDef, by: str, match: str = "", window: str = "1m") -> str:
    sel = d.series("bucket") + (f"{{{match}}}" if match else "")
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({sel}[{window}])))"


def _mean(d: c.MetricDef, by: str, window: str) -> str:
    """A histogram's mean over the window: rate of its sum over rate of its count."""
    return (f"sum by ({by}) (rate({d.series('sum')}[{window}])) / "
            f"sum by ({by}) (rate({d.series('count')}[{window}]))")


def _gauge(d: c.MetricDef, by: str, op: str = "sum", match: str = "") -> str:
    sel = f"{d.name}{{{match}}}" if match else d.name
    return f"{op} by ({by}) ({sel})"


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Gateways", (
        Panel("Request rate by model and status", (
            (_rate(c.GATEWAY_REQUESTS, "model, code", MODEL), "{{model}} {{code}}"),), "reqps"),
        Panel("Error ratio (5xx per request)", ((
            f"({_rate(c.GATEWAY_REQUESTS, 'model', MODEL + ',code=~' + FIVE)} or "
            f"{_rate(c.GATEWAY_REQUESTS, 'model', MODEL)} * 0) / "
            f"{_rate(c.GATEWAY_REQUESTS, 'model', MODEL)}", "{{model}}"),), "percentunit"),
        Panel("Latency p50 / p99", (
            (_quantile(0.5, c.GATEWAY_DURATION, "model", MODEL), "p50 {{model}}"),
            (_quantile(0.99, c.GATEWAY_DURATION, "model", MODEL), "p99 {{model}}")), "s"),
        Panel("Replicas behind the gateways, retries", (
            (_gauge(c.GATEWAY_HEALTHY, "deployment"), "healthy {{deployment}}"),
            (_gauge(c.GATEWAY_REPLICAS, "deployment"), "routed {{deployment}}"),
            (f"sum(rate({c.GATEWAY_RETRIES.name}[5m]))", "retries/s"),
            (f"sum(rate({c.GATEWAY_RETRY_REFUSED.name}[5m]))", "retries refused/s"))),
    )),
    ("Replicas", (
        Panel("Request rate per replica", (
            (_rate(c.REPLICA_REQUESTS, "deployment, replica"), "{{replica}}"),), "reqps"),
        Panel("Batch size (mean, p99)", (
            (_mean(c.REPLICA_BATCH, "deployment", "5m"),
             "mean {{deployment}}"),
            (_quantile(0.99, c.REPLICA_BATCH, "deployment", window="5m"), "p99 {{deployment}}"),
        )),
        Panel("Batch wait and forward pass p99", (
            (_quantile(0.99, c.REPLICA_BATCH_WAIT, "deployment"), "wait {{deployment}}"),
            (_quantile(0.99, c.REPLICA_FORWARD, "deployment"), "forward {{deployment}}")), "s"),
        Panel("In flight and queued", (
            (_gauge(c.REPLICA_INFLIGHT, "deployment"), "requests {{deployment}}"),
            (_gauge(c.REPLICA_QUEUE, "deployment"), "rows queued {{deployment}}"))),
        Panel("Serving version", (
            (_gauge(c.REPLICA_VERSION, "deployment, replica", "max"), "{{replica}}"),)),
        Panel("Feedback received", (
            (_rate(c.REPLICA_FEEDBACK, "deployment, outcome", window="5m"),
             "{{deployment}} {{outcome}}"),), "reqps"),
    )),
    ("Control plane", (
        Panel("Replicas by state", (
            (_gauge(c.CONTROL_REPLICAS, "deployment, state"), "{{deployment}} {{state}}"),
            (_gauge(c.CONTROL_WANTED, "deployment"), "{{deployment}} wanted"))),
        Panel("Reconcile pass p99, leader", (
            (_quantile(0.99, c.CONTROL_RECONCILE, "instance", window="5m"), "p99 {{instance}}"),
            (_gauge(c.CONTROL_LEADER, "instance", "max"), "leading {{instance}}"))),
        Panel("Restarts (1h)", (
            (f"sum by (deployment, process) (increase({c.CONTROL_RESTARTS.name}[1h]))",
             "{{deployment}} {{process}}"),)),
        Panel("Alerts firing", (
            (_gauge(c.CONTROL_FIRING, "rule"), "{{rule}}"),)),
    )),
    ("Online learning", (
        Panel("Feedback waiting for the learner", (
            (_gauge(c.LEARNER_LAG, "model", "max", MODEL), "{{model}}"),)),
        Panel("Feedback consumed and applied", (
            (_rate(c.LEARNER_CONSUMED, "model", MODEL, "5m"), "consumed {{model}}"),
            (_rate(c.LEARNER_APPLIED, "model", MODEL, "5m"), "applied {{model}}")), "reqps"),
        Panel("Challengers (1h)", (
            (f"sum by (model, decision) (increase({c.LEARNER_CHALLENGERS.name}{{{MODEL}}}[1h]))",
             "{{model}} {{decision}}"),)),
        Panel("Accuracy on feedback, champion holdout", (
            (_gauge(c.LEARNER_ACCURACY, "model", "max", MODEL), "feedback {{model}}"),
            (_gauge(c.LEARNER_HOLDOUT, "model", "max", MODEL), "holdout {{model}}")),
              "percentunit"),
        Panel("Input drift: PSI, top 10 features", (
            (f"topk(10, {_gauge(c.LEARNER_PSI, 'model, feature', 'max', MODEL)})",
             "{{model}} {{feature}}"),)),
        Panel("Share of features drifted, champion version", (
            (_gauge(c.LEARNER_DRIFTED, "model", "max", MODEL), "drifted {{model}}"),
            (_gauge(c.LEARNER_CHAMPION, "model", "max", MODEL), "champion {{model}}"))),
    )),
    ("Training", (
        Panel("Training loss", ((_gauge(c.TRAIN_LOSS, "run, model", "max"), "{{model}} {{run}}"),)),
        Panel("Epochs done / wanted, throughput", (
            (f"{_gauge(c.TRAIN_EPOCH, 'run, model', 'max')} / "
             f"{_gauge(c.TRAIN_EPOCHS, 'run, model', 'max')}", "{{model}} {{run}}"),
            (_gauge(c.TRAIN_RATE, "run, model", "max"), "samples/s {{run}}"))),
    )),
)


def expressions() -> list[str]:
    """Every PromQL query of the board (``$model`` still in it)."""
    return [q for _, panels in ROWS for p in panels for q, _ in p.targets]


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, pid = 0, 1
    for row, items in ROWS:
        panels.append({"type": "row", "title": row, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y, x = pid + 1, y + 1, 0
        for p in items:
            if x + p.width > 24:
                x, y = 0, y + 8
            panels.append({
                "type": "timeseries", "title": p.title, "id": pid, "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": p.width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "targets": [{"expr": q, "legendFormat": legend, "refId": chr(65 + i),
                             "datasource": DATASOURCE}
                            for i, (q, legend) in enumerate(p.targets)]})
            pid, x = pid + 1, x + p.width
        y += 8
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "title": "Stratum", "uid": "stratum", "schemaVersion": 38, "version": 1,
        "editable": True, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "tags": ["stratum"],
        "templating": {"list": [{
            "name": "model", "label": "model", "type": "query", "datasource": DATASOURCE,
            "query": f"label_values({c.GATEWAY_REQUESTS.name}, model)", "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"text": "All", "value": "$__all"}}]},
        "panels": panels,
    }
