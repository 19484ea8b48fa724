"""The metric catalogue and what is generated from it (Grafana board, Prometheus rules), the
rules' built-in evaluator on scraped samples, alerts as events in a real SQLite store, JSON
logs, and tracing that costs nothing when it is off."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stratum.config.monitor import MonitorSettings
from stratum.control.metrics import ControlMetrics
from stratum.gateway.metrics import GatewayMetrics
from stratum.monitor import catalog as c
from stratum.monitor.alerts import Alert, AlertManager
from stratum.monitor.dashboard import expressions
from stratum.monitor.export import DASHBOARD, RULES, dashboard_json, rules_text
from stratum.monitor.logging import bind, request_context, setup_logging
from stratum.monitor.metrics import new_registry, render, sample
from stratum.monitor.promql import Agg, Quantile, Rate, sel
from stratum.monitor.rules import Evaluator, default_rules
from stratum.monitor.scrape import History, parse
from stratum.online.metrics import LearnerMetrics
from stratum.serve.metrics import ReplicaMetrics
from stratum.store import Store

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^stratum_(gateway|replica|control|learner|train)_[a-z0-9_]+$")


# -- the catalogue ----------------------------------------------------------------------
def test_every_name_follows_the_scheme_and_is_documented() -> None:
    doc = (ROOT / "docs" / "monitoring.md").read_text()
    names = [d.name for d in c.CATALOG]
    assert len(names) == len(set(names))
    for d in c.CATALOG:
        assert NAME.match(d.name), d.name
        assert d.name.endswith("_total") == (d.kind == "counter"), d.name
        if d.kind == "histogram":
            assert d.name.endswith(("_seconds", "_rows")), d.name
        assert f"`{d.name}`" in doc, f"{d.name} is not in docs/monitoring.md"


def test_processes_export_only_catalogued_names() -> None:
    gw = GatewayMetrics()
    gw.observe("/v1/models/mnist:predict", {"mnist": object()}, 200, 0.003)
    gw.observe("/v1/models/who:predict", {"mnist": object()}, 404, 0.001)
    gw.observe("/metrics", {}, 200, 0.001)
    rep = ReplicaMetrics("mnist")
    rep.observe("/v1/models/{name}:predict", 200, 0.002)
    rep.on_batch(8, 0.001, 0.002)
    control = ControlMetrics()
    control.note("replica.crashed", "mnist", {})
    control.observe({}, True, 3)
    learner = LearnerMetrics("mnist")
    known = c.series_names()
    for registry in (gw.registry, rep.registry, control.registry, learner.registry):
        text = render(registry)[0].decode()
        exported = set(re.findall(r"^(stratum_[a-z0-9_]+)", text, re.M))
        assert exported and exported <= known, exported - known
    labels = {"model": "mnist", "route": "predict", "code": "200"}
    assert sample(gw.registry, c.GATEWAY_REQUESTS.name, labels) == 1
    # A model nobody deployed is one label value, not one per name a client makes up.
    assert sample(gw.registry, c.GATEWAY_REQUESTS.name,
                  {"model": "unknown", "route": "predict", "code": "404"}) == 1
    assert sample(control.registry, c.CONTROL_RESTARTS.name,
                  {"deployment": "mnist", "process": "replica"}) == 1
    assert sample(control.registry, c.CONTROL_LEADER.name) == 1
    assert sample(rep.registry, c.REPLICA_FEEDBACK.name, {"outcome": "accepted"}) == 0


def test_board_and_rules_file_are_generated_from_the_code() -> None:
    # python -m stratum.monitor.export regenerates both after a change.
    assert (ROOT / "docs" / DASHBOARD).read_text() == dashboard_json()
    assert (ROOT / "docs" / RULES).read_text() == rules_text()
    known = c.series_names()
    board = json.loads(dashboard_json())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert queries == expressions() and len(queries) >= 30
    queries.append(board["templating"]["list"][0]["query"])
    for rule in default_rules(MonitorSettings()):
        queries.append(rule.promql())
    used = {n for q in queries for n in re.findall(r"stratum_[a-z0-9_]+", q)}
    assert used <= known, used - known
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for wanted in ("request rate", "latency", "batch size", "drift", "restarts", "training"):
        assert wanted in titles


# -- the rules on scraped samples -------------------------------------------------------
def _page(requests: float, errors: float, buckets: dict[str, float]) -> str:
    lines = [f'stratum_gateway_requests_total{{model="m",route="predict",code="200"}} '
             f"{requests}",
             f'stratum_gateway_requests_total{{model="m",route="predict",code="503"}} {errors}',
             'stratum_gateway_requests_total{model="",route="other",code="200"} 1000']
    lines += [f'stratum_gateway_request_duration_seconds_bucket{{model="m",route="predict",'
              f'le="{le}"}} {n}' for le, n in buckets.items()]
    return "\n".join(lines) + "\n"


def test_rules_evaluate_like_promql_and_fire_after_their_hold() -> None:
    cfg = MonitorSettings(rule_window_s=60, alert_for_s=20, error_ratio_max=0.05,
                          latency_p99_target_s=0.2)
    now = [0.0]
    ev = Evaluator(default_rules(cfg), lambda: now[0])
    hist = History(120)
    # (time, answered 200, answered 503, under 0.1 s, under 0.25 s): 1% errors and fast,
    # then 10% errors and slow from t=30 on
    rounds = [(0, 0, 0, 0, 0), (15, 100, 1, 101, 101), (30, 190, 20, 180, 210),
              (45, 290, 40, 270, 330), (60, 390, 60, 360, 450)]
    fired = []
    for t, ok, bad, fast, slower in rounds:
        now[0] = t
        buckets = {"0.1": fast, "0.25": slower, "+Inf": ok + bad}
        hist.add(t, parse(_page(ok, bad, buckets), {"component": "gateway"}))
        fired = ev.check(hist)
        if t < 60:  # holding since t=30, for 15 s only at t=45
            assert fired == [], (t, fired)
    assert [(a.rule, a.subject) for a in fired] == [("errors.ratio", "m"), ("latency.p99", "m")]
    rules = {r.name: r for r in ev.rules}
    # The gateway's own routes (1,000 scrapes) do not dilute the ratio.
    assert rules["errors.ratio"].expr.evaluate(hist) == {(("model", "m"),): pytest.approx(
        60 / 450)}
    # 450 requests in the window, 360 under 0.1 s: the 445.5th lies 85.5/90 into the next
    p99 = rules["latency.p99"].expr.evaluate(hist)[(("model", "m"),)]
    assert p99 == pytest.approx(0.1 + 0.15 * 85.5 / 90)
    assert fired[0].details["labels"] == {"model": "m"} and ev.firing["errors.ratio"]


def test_histogram_quantile_interpolates_as_prometheus_does() -> None:
    hist = History(100)
    for t, counts in ((0.0, (0, 0, 0)), (10.0, (50, 90, 100))):
        page = "".join(f'x_bucket{{le="{le}"}} {n}\n' for le, n in zip(
            ("0.1", "0.2", "+Inf"), counts, strict=True))
        hist.add(t, parse(page, {}))
    q = Quantile(0.5, Agg("sum", Rate(sel("x_bucket"), 60), ("le",)))
    assert q.evaluate(hist) == {(): pytest.approx(0.1)}
    q = Quantile(0.7, Agg("sum", Rate(sel("x_bucket"), 60), ("le",)))
    assert q.evaluate(hist) == {(): pytest.approx(0.1 + 0.1 * 20 / 40)}
    assert q.promql() == 'histogram_quantile(0.7, sum by (le) (rate(x_bucket[1m])))'


def test_no_traffic_and_missing_feedback() -> None:
    cfg = MonitorSettings(alert_for_s=0, feedback_window_s=60)
    ev = Evaluator(default_rules(cfg), lambda: 0.0)
    hist = History(120)
    for t, served, fb in ((0, 0, 0), (10, 0, 0)):
        hist.add(t, parse(
            f'stratum_replica_requests_total{{route="/v1/models/{{name}}:predict",code="200"}} '
            f'{served}\nstratum_replica_feedback_total{{outcome="accepted"}} {fb}\n'
            "stratum_control_replicas_wanted{deployment=\"d\"} 2\n"
            "stratum_control_replicas_ready{deployment=\"d\"} 2\n",
            {"deployment": "d"}))
    assert ev.check(hist) == []  # nothing served: 0/0 is no alert
    hist.add(20, parse(
        'stratum_replica_requests_total{route="/v1/models/{name}:predict",code="200"} 9\n'
        'stratum_replica_feedback_total{outcome="accepted"} 0\n'
        'stratum_control_replicas_wanted{deployment="d"} 2\n'
        'stratum_control_replicas_ready{deployment="d"} 1\n', {"deployment": "d"}))
    fired = {(a.rule, a.subject) for a in ev.check(hist)}
    assert fired == {("feedback.none", "d"), ("replica.down", "d")}


# -- alerts as events ---------------------------------------------------------------------
def test_alerts_are_recorded_once_per_cooldown_across_processes(store: Store) -> None:
    now = [0.0]
    registry = new_registry()
    counter = c.CONTROL_ALERTS.counter(registry)
    first = AlertManager(store.meta, cooldown_s=60, counter=counter, clock=lambda: now[0])
    a = Alert("learner.lag", "mnist", 20_000, 1000, "feedback waiting")
    assert first.fire([a, a]) == [a]  # the same alert twice in a cooldown: once
    now[0] = 61.0
    assert first.fire([a]) == []  # past its own cooldown, but the store has it lately
    other = AlertManager(store.meta, cooldown_s=60)  # another process: the learner
    assert other.fire([a]) == []
    assert other.fire([Alert("drift.input", "mnist", 0.4, 0.1, "drifted", {"window": 3})])
    events = store.meta.events(kind="alert.*")
    assert sorted(e.kind for e in events) == ["alert.drift.input", "alert.learner.lag"]
    lag = next(e for e in events if e.kind == "alert.learner.lag")
    assert lag.subject == "mnist" and lag.payload["value"] == 20_000
    assert sample(registry, c.CONTROL_ALERTS.name, {"rule": "learner.lag"}) == 1
    assert AlertManager(store.meta, cooldown_s=0).fire([a]) == [a]  # no cooldown: again


# -- logs -------------------------------------------------------------------------------------
def test_json_logs_carry_request_id_and_process_fields() -> None:
    buf = io.StringIO()
    setup_logging("INFO", component="gateway", stream=buf)
    setup_logging("INFO", component="replica", stream=buf, deployment="mnist", replica="r1")
    log = logging.getLogger("stratum.test")
    with request_context("req-42") as rid:
        log.info("predicted %d rows", 3, extra={"model": "mnist"})
    bind(version=4)
    log.debug("hidden")
    log.warning("outside", extra={"request_id": "req-43"})
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert rid == "req-42" and len(lines) == 2
    assert lines[0]["request_id"] == "req-42" and lines[0]["msg"] == "predicted 3 rows"
    assert lines[0]["component"] == "replica" and lines[0]["deployment"] == "mnist"
    assert lines[0]["replica"] == "r1" and "version" not in lines[0]
    assert lines[1]["version"] == 4 and lines[1]["request_id"] == "req-43"
    setup_logging("WARNING", stream=io.StringIO())


# -- tracing off costs nothing ----------------------------------------------------------------
def test_tracing_off_never_imports_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from stratum.config import Settings\n"
        "from stratum.gateway.app import Gateway\n"
        "from stratum.serve.app import Replica\n"
        "from stratum.monitor.tracing import tracer_for\n"
        "s = Settings()\n"
        "assert Gateway(s).tracer is None and tracer_for(s.monitor, 'replica') is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
