"""The control plane's Prometheus metrics (names in ``monitor.catalog``): reconcile timings,
events, restarts, replica states, leadership, alerts — and the progress of training runs,
read from the store, since training workers report there and are not scraped themselves.

Counters move as things happen (``timed``, ``note``); the gauges are set from the
supervisor's state when ``/metrics`` is read or the alert rules run (``observe``), and from
the store for the page (``page``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from stratum.monitor import catalog as c
from stratum.monitor.metrics import new_registry, render
from stratum.store import models as m
from stratum.store.metadata import MetadataStore

if TYPE_CHECKING:
    from stratum.control.state import DeploymentState

log = logging.getLogger("stratum.control.supervisor")
# Events that mean a process died unasked and is being replaced, by process kind.
_RESTARTS = {"replica.crashed": "replica", "gateway.crashed": "gateway"}
_RUNS = 20  # training runs shown: the most recent ones
# Stored metric keys per gauge, preferred first: the throttled per-step rows, else the
# per-epoch ones (a short run may have written no step row).
_TRAIN_KEYS = {c.TRAIN_LOSS: ("loss", "val_loss"),
               c.TRAIN_RATE: ("samples_per_s", "epoch_samples_per_s")}
_STATES = ("starting", "ready", "draining")


class ControlMetrics:
    def __init__(self) -> None:
        self.registry = r = new_registry()
        self.reconcile = c.CONTROL_RECONCILE.histogram(r)
        self.reconcile_errors = c.CONTROL_RECONCILE_ERRORS.counter(r)
        self.events = c.CONTROL_EVENTS.counter(r)
        self.restarts = c.CONTROL_RESTARTS.counter(r)
        self.alerts = c.CONTROL_ALERTS.counter(r)
        self.firing = c.CONTROL_FIRING.gauge(r)
        self.scrapes = c.CONTROL_SCRAPES.counter(r)
        self.audit_pruned = c.CONTROL_AUDIT_PRUNED.counter(r)  # control.retention
        self._replicas = c.CONTROL_REPLICAS.gauge(r)
        self._wanted = c.CONTROL_WANTED.gauge(r)
        self._ready = c.CONTROL_READY.gauge(r)
        self._gateways = c.CONTROL_GATEWAYS.gauge(r)
        self._deployments = c.CONTROL_DEPLOYMENTS.gauge(r)
        self._leader = c.CONTROL_LEADER.gauge(r)
        self._term = c.CONTROL_TERM.gauge(r)
        self._train = {d.name: d.gauge(r) for d in (
            c.TRAIN_EPOCH, c.TRAIN_EPOCHS, c.TRAIN_STEP, c.TRAIN_LOSS, c.TRAIN_RATE,
            c.TRAIN_RESTARTS)}
        self._runs = c.TRAIN_RUNS.gauge(r)

    # -- as things happen ------------------------------------------------------------------
    def note(self, kind: str, subject: str, payload: dict[str, Any]) -> None:
        """One supervisor event about deployment ``subject``: a log line and the counts."""
        log.info("%s %s %s", kind, subject, payload, extra={"deployment": subject})
        self.events.labels(kind).inc()
        process = _RESTARTS.get(kind)
        if process is not None:
            self.restarts.labels(subject, process).inc()
        elif kind == "deployment.reconcile_failed":
            self.reconcile_errors.labels(subject).inc()

    async def timed(self, tick: Awaitable[bool]) -> bool:
        """Await one reconcile pass, timing it."""
        t0 = time.perf_counter()
        try:
            return await tick
        finally:
            self.reconcile.observe(time.perf_counter() - t0)

    # -- on scrape --------------------------------------------------------------------------
    def observe(self, states: dict[str, DeploymentState], leader: bool | None = None,
                term: int | None = None) -> None:
        """Set the gauges from the supervisor's ``states`` (on its event loop: they change
        there) and, when given, the role."""
        if leader is not None:
            self._leader.set(1 if leader else 0)
        if term is not None:
            self._term.set(term)
        for g in (self._replicas, self._wanted, self._ready, self._gateways,
                  self._deployments):
            g.clear()  # deployments that went away leave no stale series
        statuses: Tally[str] = Tally()
        for name, st in states.items():
            for process in _RESTARTS.values():  # zero, not absent, before the first one
                self.restarts.labels(name, process)
            self.reconcile_errors.labels(name)
            states_now = Tally(r.state for r in st.replicas.values())
            for state in _STATES:
                self._replicas.labels(name, state).set(states_now[state])
            wanted = sum(st.spec.versions().values()) if st.spec is not None else 0
            self._wanted.labels(name).set(wanted)
            self._ready.labels(name).set(states_now["ready"])
            self._gateways.labels(name).set(sum(g.live for g in st.gateways.values()))
            statuses[(st.last_observed or {}).get("status", "starting")] += 1
        for status, n in statuses.items():
            self._deployments.labels(status).set(n)

    def page(self, meta: MetadataStore | None) -> bytes:
        """The page, with the training runs read from the store first (blocking: call it
        from a worker thread)."""
        if meta is not None:
            self._training(meta)
        return render(self.registry)[0]

    def _training(self, meta: MetadataStore) -> None:
        """The last reported step, epoch, loss, throughput and restarts of recent runs."""
        for g in (*self._train.values(), self._runs):
            g.clear()
        with meta.session() as s:
            runs = list(s.scalars(select(m.Run).where(m.Run.strategy != "online")
                                  .order_by(m.Run.started_at.desc()).limit(_RUNS)))
            statuses: Tally[str] = Tally(run.status for run in runs)
            for run in runs:
                self._run(s, run)
        for status, n in statuses.items():
            self._runs.labels(status).set(n)

    def _run(self, s: Any, run: m.Run) -> None:
        rows = s.execute(select(m.Metric.key, m.Metric.value, m.Metric.step, m.Metric.epoch)
                         .where(m.Metric.run_id == run.id).order_by(m.Metric.id.desc())
                         .limit(50)).all()
        labels = (run.id, run.name)
        epochs = (run.config or {}).get("epochs")
        if epochs is not None:
            self._train[c.TRAIN_EPOCHS.name].labels(*labels).set(float(epochs))
        latest: dict[str, float] = {}
        for key, value, step, epoch in rows:  # newest first: the first of each key counts
            if not latest:
                self._train[c.TRAIN_STEP.name].labels(*labels).set(step)
                self._train[c.TRAIN_EPOCH.name].labels(*labels).set(epoch or 0)
            latest.setdefault(key, value)
        for d, keys in _TRAIN_KEYS.items():
            found = next((latest[k] for k in keys if k in latest), None)
            if found is not None:
                self._train[d.name].labels(*labels).set(found)
        # The launcher logs each restart as it happens; a finished run's summary has them all.
        restarts = s.scalar(select(func.max(m.Metric.value)).where(
            m.Metric.run_id == run.id, m.Metric.key == "restarts"))
        done = len((run.summary or {}).get("restarts", []))
        self._train[c.TRAIN_RESTARTS.name].labels(*labels).set(max(restarts or 0, done))
