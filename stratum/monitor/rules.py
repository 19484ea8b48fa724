"""The alert rules, defined once: Prometheus' rules file is rendered from them
(``rules_yaml``), and the control plane's built-in evaluator runs the same objects over the
samples it scrapes (``Evaluator``), recording what fires as ``alert.<rule>`` events.

- ``errors.ratio``: 5xx per request at the gateway, per model, over ``rule_window_s``,
  above ``error_ratio_max``;
- ``latency.p99``: the gateway's p99 latency per model over ``rule_window_s`` above
  ``latency_p99_target_s``;
- ``replica.down``: a deployment has fewer ready replicas than it wants;
- ``learner.lag``: feedback waiting for a model's learner above ``learner_lag_max_messages``;
- ``drift.input``: share of drifted input features at least
  ``online.drift_feature_fraction``;
- ``feedback.none``: a deployment served predictions over ``feedback_window_s`` and got no
  feedback.

Each must hold for ``alert_for_s`` (Prometheus' ``for:``) before it fires. A rule's
``subject`` label (model or deployment) is the event's subject.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from stratum.config.monitor import MonitorSettings
from stratum.monitor import catalog as c
from stratum.monitor.alerts import Alert
from stratum.monitor.promql import (
    OPS,
    Agg,
    Bin,
    Expr,
    OrZero,
    Quantile,
    Rate,
    Re,
    Samples,
    duration,
)
from stratum.monitor.promql import Ne as _Ne
from stratum.monitor.promql import sel as _sel

GROUP = "stratum"
INFER_ROUTES = Re(".*(infer|predict)")


@dataclass(frozen=True)
class Rule:
    name: str
    expr: Expr  # the value compared, per subject
    op: str
    threshold: float
    subject: str  # the label naming what the alert is about
    for_s: int
    summary: str

    def promql(self) -> str:
        return f"{self.expr.promql()} {self.op} {self.threshold:g}"

    def alerts(self, samples: Samples) -> list[Alert]:
        """Alerts of the subjects for which the condition holds now (``for_s`` aside)."""
        out = []
        for labels, value in self.expr.evaluate(samples).items():
            if math.isnan(value) or not OPS[self.op](value, self.threshold):
                continue
            subject = dict(labels).get(self.subject, "system")
            out.append(Alert(self.name, subject, value, self.threshold,
                             f"{self.summary}: {value:.4g} {self.op} {self.threshold:g}",
                             {"labels": dict(labels), "expr": self.promql()}))
        return out


def default_rules(cfg: MonitorSettings, drift_fraction: float = 0.1) -> list[Rule]:
    """The rules with the thresholds of ``cfg`` (and ``online.drift_feature_fraction``)."""
    w, fw, hold = cfg.rule_window_s, cfg.feedback_window_s, cfg.alert_for_s
    served = _Ne("")  # the gateway's own routes (health, metrics) have no model

    def by_model(expr: Expr, by: tuple[str, ...] = ("model",)) -> Agg:
        return Agg("sum", expr, by)

    requests = c.GATEWAY_REQUESTS.name
    return [
        Rule("errors.ratio", Bin(
            "/", OrZero(by_model(Rate(_sel(requests, code=Re("5.."), model=served), w)),
                        by_model(Rate(_sel(requests, model=served), w))),
            by_model(Rate(_sel(requests, model=served), w))),
            ">", cfg.error_ratio_max, "model", hold, "share of 5xx answers at the gateway"),
        Rule("latency.p99", Quantile(0.99, by_model(
            Rate(_sel(c.GATEWAY_DURATION.series("bucket"), model=served), w), ("le", "model"))),
            ">", cfg.latency_p99_target_s, "model", hold,
            "p99 latency at the gateway (seconds)"),
        Rule("replica.down", Bin("-", _sel(c.CONTROL_WANTED.name), _sel(c.CONTROL_READY.name)),
             ">", 0, "deployment", hold, "replicas wanted but not ready"),
        Rule("learner.lag", Agg("max", _sel(c.LEARNER_LAG.name), ("model",)), ">",
             cfg.learner_lag_max_messages, "model", hold,
             "feedback messages waiting for the learner"),
        Rule("drift.input", Agg("max", _sel(c.LEARNER_DRIFTED.name), ("model",)), ">=",
             drift_fraction, "model", hold, "share of input features drifted"),
        Rule("feedback.none", Bin(
            "/", by_model(Rate(_sel(c.REPLICA_FEEDBACK.name, outcome="accepted"), fw, True),
                          ("deployment",)),
            by_model(Rate(_sel(c.REPLICA_REQUESTS.name, route=INFER_ROUTES), fw, True),
                     ("deployment",))),
            "<=", 0, "deployment", hold, f"feedback per prediction over {duration(fw)}"),
    ]


def rules_document(rules: list[Rule]) -> dict[str, Any]:
    """Prometheus' rules file as a document."""
    return {"groups": [{"name": GROUP, "rules": [{
        "alert": r.name.replace(".", "_"),
        "expr": r.promql(),
        **({"for": duration(r.for_s)} if r.for_s else {}),
        "labels": {"severity": "warning", "stratum_rule": r.name},
        "annotations": {
            "summary": r.summary,
            "description": f"{r.name} on {{{{ $labels.{r.subject} }}}}: {{{{ $value }}}} "
                           f"{r.op} {r.threshold:g}",
        },
    } for r in rules]}]}


def rules_yaml(rules: list[Rule]) -> str:
    header = ("# Generated from stratum/monitor/rules.py by `python -m stratum.monitor.export`;"
              " do not edit.\n")
    return header + yaml.safe_dump(rules_document(rules), sort_keys=False, width=1000)


class Evaluator:
    """Runs ``rules`` over ``samples`` each ``check``; an alert fires once its condition has
    held for the rule's ``for_s`` (as Prometheus' pending → firing), and ``firing`` lists
    what holds now, by rule."""

    def __init__(self, rules: list[Rule], clock: Callable[[], float]) -> None:
        self.rules, self._clock = rules, clock
        self._since: dict[tuple[str, str], float] = {}
        self.firing: dict[str, list[Alert]] = {r.name: [] for r in rules}

    def names(self) -> set[str]:
        """The series the rules read: the only ones worth keeping from a scrape."""
        return set().union(*(r.expr.names() for r in self.rules))

    def check(self, samples: Samples) -> list[Alert]:
        now = self._clock()
        fired: list[Alert] = []
        holding: set[tuple[str, str]] = set()
        for rule in self.rules:
            self.firing[rule.name] = []
            for alert in rule.alerts(samples):
                key = (rule.name, alert.subject)
                holding.add(key)
                since = self._since.setdefault(key, now)
                if now - since >= rule.for_s:
                    self.firing[rule.name].append(alert)
                    fired.append(alert)
        self._since = {k: v for k, v in self._since.items() if k in holding}
        return fired
