"""Metrics, JSON logs and alert rules (events in a real SQLite metadata store)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from pathlib import Path

import httpx
import pytest

from stratum.monitor.alerts import Alert, AlertManager, ThresholdRule, default_rules
from stratum.monitor.logging import request_context, setup_logging
from stratum.monitor.metrics import METRIC_NAMES, Metrics, metrics_endpoint, render, sample
from stratum.store import Store

ROOT = Path(__file__).resolve().parents[2]


def test_standard_metrics_and_metrics_endpoint() -> None:
    m = Metrics.create("replica")
    with m.time_request("mnist", "predict") as st:
        st.code = 200
    with pytest.raises(ValueError), m.time_request("mnist", "predict"):
        raise ValueError("boom")
    m.batch_size.labels("mnist").observe(7)
    m.observe_queue("feedback", size=12, pending=3)
    labels = {"component": "replica", "model": "mnist", "route": "predict"}
    assert sample(m.registry, "stratum_requests_total", {**labels, "code": "200"}) == 1
    assert sample(m.registry, "stratum_requests_total", {**labels, "code": "500"}) == 1
    assert sample(m.registry, "stratum_request_latency_seconds_count", labels) == 2
    assert sample(m.registry, "stratum_inflight_requests",
                  {"component": "replica", "model": "mnist"}) == 0
    body, ctype = render(m.registry)
    assert ctype.startswith("text/plain")
    text = body.decode()
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name

    async def scrape() -> httpx.Response:
        transport = httpx.ASGITransport(app=metrics_endpoint(m.registry))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get("/metrics")

    r = asyncio.run(scrape())
    assert r.status_code == 200 and 'stratum_queue_depth{stream="feedback"} 12.0' in r.text


def test_dashboard_queries_only_defined_metrics() -> None:
    dash = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for wanted in ("request rate", "latency", "batch size", "queue depth", "drift"):
        assert wanted in titles
    used = {n for e in exprs for n in re.findall(r"stratum_[a-z_]+", e)}
    suffixes = ("bucket", "sum", "count")
    known = set(METRIC_NAMES) | {f"{n}_{s}" for n in METRIC_NAMES for s in suffixes}
    assert used and used <= known, used - known


def test_json_logs_carry_request_id() -> None:
    buf = io.StringIO()
    setup_logging("INFO", component="gateway", stream=buf)
    setup_logging("INFO", component="gateway", stream=buf)  # idempotent: one handler
    log = logging.getLogger("stratum.test")
    with request_context("req-42") as rid:
        log.info("predicted %d rows", 3, extra={"model": "mnist"})
    log.debug("hidden")
    log.warning("outside")
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert rid == "req-42" and len(lines) == 2
    assert lines[0]["request_id"] == "req-42" and lines[0]["msg"] == "predicted 3 rows"
    assert lines[0]["model"] == "mnist" and lines[0]["component"] == "gateway"
    assert "request_id" not in lines[1] and lines[1]["level"] == "WARNING"
    setup_logging("WARNING", stream=io.StringIO())


def test_alerts_fire_past_threshold_and_are_recorded(store: Store) -> None:
    m = Metrics.create("gateway")
    now = [0.0]
    manager = AlertManager(store.meta, default_rules(), cooldown_s=60, metrics=m,
                           clock=lambda: now[0])
    m.queue_depth.labels("feedback").set(10)
    assert manager.evaluate(m.registry) == []  # below every threshold
    m.queue_depth.labels("feedback").set(20_000)
    fired = manager.evaluate(m.registry)
    assert [a.rule for a in fired] == ["queue.backlog"] and fired[0].value == 20_000
    assert manager.evaluate(m.registry) == []  # cooldown: recorded once
    now[0] = 61.0
    assert [a.rule for a in manager.evaluate(m.registry)] == ["queue.backlog"]
    events = store.meta.events(kind="alert.*")
    assert [e.kind for e in events] == ["alert.queue.backlog"] * 2
    assert events[0].payload["value"] == 20_000 and events[0].payload["threshold"] == 10_000
    assert sample(m.registry, "stratum_alerts_total", {"rule": "queue.backlog"}) == 2


def test_ratio_rule_uses_the_delta_between_evaluations() -> None:
    m = Metrics.create("replica")
    rule = ThresholdRule("errors.ratio", "stratum_errors_total", 0.05,
                         per="stratum_requests_total", mode="delta")
    for _ in range(100):
        with m.time_request("a", "predict"):
            pass
    m.errors.labels("replica", "runtime").inc(50)  # old errors: before the baseline
    assert rule.check(m.registry) is None  # first evaluation sets the baseline
    for _ in range(100):
        with m.time_request("a", "predict"):
            pass
    m.errors.labels("replica", "runtime").inc(2)
    assert rule.check(m.registry) is None  # 2% of the last 100
    for _ in range(100):
        with m.time_request("a", "predict"):
            pass
    m.errors.labels("replica", "runtime").inc(10)
    alert = rule.check(m.registry)
    assert alert is not None and alert.value == pytest.approx(0.10)


def test_drift_alerts_go_through_the_manager(store: Store) -> None:
    manager = AlertManager(store.meta)
    a = Alert("drift.input", "mnist", 0.4, 0.1, "drifted", {"window": 3})
    assert manager.fire([a, a]) == [a]  # the same alert twice in a cooldown: once
    (ev,) = store.meta.events(kind="alert.drift.*")
    assert ev.subject == "mnist" and ev.payload["window"] == 3
