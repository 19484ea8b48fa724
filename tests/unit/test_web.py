"""The dashboard's pure parts: reading a replica's metrics, quantiles from histogram
buckets, where a login may lead, CSRF tokens, and escaping in the templates."""

from __future__ import annotations

import math

import pytest

from stratum.serve.metrics import ReplicaMetrics
from stratum.web.live import Counters, parse, quantile
from stratum.web.session import safe_next
from stratum.web.site import csrf_token, environment


def test_parse_reads_what_a_real_replica_exports() -> None:
    # A rename in stratum.serve.metrics must fail here, not blank the dashboard's charts.
    m = ReplicaMetrics("tabular")
    for _ in range(3):  # labelled by route template, as the replica's app does
        m.observe("/v1/models/{name}:predict", 200, 0.003)
    m.observe("/v2/models/{name}/infer", 503, 0.2)
    m.observe("/v1/models/{name}/feedback", 200, 0.001)
    m.observe("/v2/models/{name}", 200, 0.001)
    m.batch_size.observe(4)
    m.batch_size.observe(2)
    c = parse(m.render(queue_depth=0, inflight=2).decode())
    assert (c.requests, c.errors, c.feedback) == (4, 1, 1)
    assert c.latency[math.inf] == 4 and c.latency[0.005] == 3
    assert (c.batches, c.rows, c.inflight) == (2, 6, 2)


def test_counters_minus_restarts_from_zero() -> None:
    before = Counters(requests=10, errors=1, latency={1.0: 10, math.inf: 10}, batches=5)
    later = Counters(requests=15, errors=1, latency={1.0: 14, math.inf: 15}, batches=7)
    d = later.minus(before)
    assert (d.requests, d.errors, d.latency[1.0], d.batches) == (5, 0, 4, 2)
    restarted = Counters(requests=3, latency={1.0: 3, math.inf: 3}, batches=1)
    assert restarted.minus(before).requests == 3  # a new process: all it counted is new


def test_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, math.inf: 100.0}
    assert quantile(buckets, 0.5) == pytest.approx(0.1)
    assert quantile(buckets, 0.99) == pytest.approx(0.198)
    assert quantile({0.1: 0.0, math.inf: 0.0}, 0.5) is None
    assert quantile({0.1: 0.0, math.inf: 4.0}, 0.99) == 0.1  # past the last edge


@pytest.mark.parametrize("target, expected", [
    ("/ui/models/tabular", "/ui/models/tabular"),
    ("https://evil.example/", "/ui/"),
    ("//evil.example/ui/", "/ui/"),
    ("/ui//evil.example", "/ui/"),
    ("/ui/\\evil", "/ui/"),
    ("/ui/x\r\nset-cookie: a=b", "/ui/"),
    (None, "/ui/"),
])
def test_login_only_leads_into_the_dashboard(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_csrf_token_is_bound_to_the_session_key() -> None:
    assert csrf_token("sk_a") == csrf_token("sk_a") != csrf_token("sk_b")
    assert "sk_a" not in csrf_token("sk_a")


def test_templates_escape_names_and_chart_data() -> None:
    env = environment()
    evil = '<script>alert("x")</script>'
    html = env.from_string("<td>{{ name }}</td><script type=application/json>"
                           "{{ doc|tojson }}</script>").render(name=evil, doc={"label": evil})
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "\\u003c/script\\u003e" in html  # cannot close the JSON block
