"""What the control plane adds to watch the system: its ``/metrics``, Prometheus' service
discovery (``/prometheus/targets``), and the built-in alert evaluator.

The targets are every process it knows: itself, each deployment's gateways (on their
loopback admin ports) and ready replicas, and the learners that wrote
``{home}/learners/NAME.json``. Prometheus gets them through ``http_sd_configs`` with labels
``component``, ``deployment``, ``replica``, ``gateway``; the evaluator scrapes the same
targets every ``monitor.alert_interval_s``, gives their samples the same labels, runs the
rules of ``monitor.rules`` on them and records what fires as ``alert.<rule>`` events — so
the same alerts exist with or without a Prometheus.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from stratum.config import Settings
from stratum.monitor.alerts import AlertManager
from stratum.monitor.metrics import render
from stratum.monitor.rules import Evaluator, default_rules
from stratum.monitor.scrape import History, Target, merge, parse
from stratum.security.tls import client_context
from stratum.store.metadata import MetadataStore

if TYPE_CHECKING:
    from stratum.control.leading import Role
    from stratum.control.supervisor import Supervisor

log = logging.getLogger(__name__)
LEARNERS = "learners"  # {home}/learners/NAME.json: a running learner's metrics URL


# -- learners ---------------------------------------------------------------------------
def learner_record(home: Path, name: str) -> Path:
    return home.expanduser().resolve() / LEARNERS / f"{name}.json"


def write_learner_record(home: Path, name: str, metrics_url: str) -> Path:
    path = learner_record(home, name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"model": name, "pid": os.getpid(),
                                  "metrics_url": metrics_url}))
    os.replace(tmp, path)
    return path


def _learners(home: Path) -> list[Target]:
    out = []
    for path in sorted((home.expanduser().resolve() / LEARNERS).glob("*.json")):
        try:
            doc = orjson.loads(path.read_bytes())
            os.kill(int(doc["pid"]), 0)  # a learner that died leaves its file behind
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append(Target(f"{doc['metrics_url'].rstrip('/')}/metrics",
                          {"component": "learner"}))
    return out


# -- targets ----------------------------------------------------------------------------
def targets(sup: Supervisor, settings: Settings, own_url: str = "") -> list[Target]:
    """Every process to scrape, with its labels (target labels never repeat a metric's
    own label names, which Prometheus would rename)."""
    out = [Target(f"{own_url}/metrics", {"component": "control"})] if own_url else []
    for name, st in sup.states.items():
        for gw in st.gateways.values():
            if gw.live:
                out.append(Target(f"{gw.admin_url}/metrics", {
                    "component": "gateway", "deployment": name, "gateway": gw.id}))
        for r in st.replicas.values():
            if r.state == "ready":
                out.append(Target(f"{r.url}/metrics", {
                    "component": "replica", "deployment": name, "replica": r.id}))
    return out + _learners(settings.home)


def service_discovery(ts: list[Target]) -> list[dict[str, Any]]:
    """Prometheus' ``http_sd_configs`` document."""
    return [{"targets": [t.address], "labels": {
        **t.labels, "__scheme__": t.url.split("://", 1)[0],
        "__metrics_path__": "/" + t.url.split("://", 1)[1].split("/", 1)[1]}} for t in ts]


# -- the evaluator ------------------------------------------------------------------------
class Alerting:
    """Scrapes the targets, keeps their samples for the longest rule window, and records
    the alerts of the rules (leader only: started when it leads)."""

    def __init__(self, settings: Settings, sup: Supervisor, meta: MetadataStore) -> None:
        cfg = self.cfg = settings.monitor
        self.settings, self.sup = settings, sup
        self.rules = default_rules(cfg, settings.online.drift_feature_fraction)
        self.evaluator = Evaluator(self.rules, time.monotonic)
        self.names = self.evaluator.names()
        keep = max(cfg.rule_window_s, cfg.feedback_window_s) + 2 * cfg.alert_interval_s
        self.history = History(keep)
        self.manager = AlertManager(meta, cooldown_s=cfg.alert_cooldown_s,
                                    counter=sup.metrics.alerts)
        self.http = httpx.AsyncClient(timeout=min(2.0, cfg.alert_interval_s),
                                      verify=client_context(settings.client_tls))
        for rule in self.rules:
            sup.metrics.firing.labels(rule.name).set(0)

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.check()
                except Exception:  # the loop outlives a bad round
                    log.exception("alert evaluation failed")
                await asyncio.sleep(self.cfg.alert_interval_s)
        finally:
            await self.http.aclose()

    async def check(self) -> list[Any]:
        """One round: scrape, evaluate, record; returns the alerts recorded."""
        ts = targets(self.sup, self.settings)
        rounds = await asyncio.gather(*(self._scrape(t) for t in ts))
        self.sup.metrics.observe(self.sup.states, leader=True)  # runs only while leading
        own = render(self.sup.metrics.registry)[0].decode()
        rounds.append(parse(own, {"component": "control"}, self.names))
        self.history.add(time.monotonic(), merge(rounds))
        firing = self.evaluator.check(self.history)
        for rule in self.rules:
            self.sup.metrics.firing.labels(rule.name).set(len(self.evaluator.firing[rule.name]))
        return await asyncio.to_thread(self.manager.fire, firing) if firing else []

    async def _scrape(self, t: Target) -> dict[str, Any]:
        component = t.labels.get("component", "")
        try:
            resp = await self.http.get(t.url)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            self.sup.metrics.scrapes.labels(component, "failed").inc()
            log.debug("scrape of %s failed: %s", t.url, exc)
            return {}
        self.sup.metrics.scrapes.labels(component, "ok").inc()
        return parse(resp.text, t.labels, self.names)


# -- routes -----------------------------------------------------------------------------
def add_routes(app: FastAPI, sup: Supervisor, role: Role, meta: MetadataStore,
               settings: Settings, url: str, guarded: list[Any]) -> None:
    """``GET /metrics`` (open, as every Stratum process's) and ``GET /prometheus/targets``
    (admin: it lists every process's address)."""

    @app.get("/metrics")
    async def metrics() -> Response:
        sup.metrics.observe(sup.states, role.leader, role.term)
        body = await asyncio.to_thread(sup.metrics.page, meta)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/prometheus/targets", dependencies=guarded)
    async def prometheus_targets() -> list[dict[str, Any]]:
        """Prometheus ``http_sd_configs``: every process to scrape, with its labels."""
        return service_discovery(targets(sup, settings, url))
