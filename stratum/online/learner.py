"""The online learner: feedback in, a gated challenger out.

One loop (``Learner.run``, or ``step`` at a time):

1. lease a micro-batch of feedback from the queue and join it with the logged inputs;
   score the served prediction against the label (prequential accuracy, drift);
2. once ``update_every`` new rows arrived (or the oldest waited ``max_wait_s``, or drift
   fired), fine-tune a challenger from the ``production`` champion on the recent window
   plus a replay sample of the training data;
3. score both on the held-out test split and on the recent rows kept out of fine-tuning
   and let the gate decide; every challenger becomes a run record with its scores and the
   decision, and only a winner a registered version with lineage (``online/record.py``);
   on a win move ``production`` to it (the supervisor of a deployment that follows the
   alias rolls the replicas onto it);
4. in one transaction claim the feedback it used (apply-once) and record the decision;
   only then ack the messages. A learner killed anywhere before the commit gets the same
   messages again after their lease; one killed after it skips them as already applied.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import torch

from stratum.config import Settings
from stratum.data.preprocessing import Pipeline
from stratum.data.signature import Signature
from stratum.errors import ConfigError, NotFoundError, StratumError
from stratum.monitor.alerts import Alert, AlertManager
from stratum.monitor.drift import DriftMonitor
from stratum.online.gate import Decision, decide
from stratum.online.metrics import LearnerMetrics
from stratum.online.models import FineTune, OnlineModel, correct, load_online_model, score
from stratum.online.record import Challenger, keep
from stratum.online.reference import load_reference
from stratum.online.window import FeedbackWindow, Pending, Row, join
from stratum.queue import Message, Queue, feedback_stream, open_queue
from stratum.store import ProcessedIds, Store, load_model
from stratum.store.models import utcnow
from stratum.store.requests import LoggedRequest, RequestLog

log = logging.getLogger(__name__)


@dataclass
class Champion:
    version: int
    model: OnlineModel
    signature: Signature
    preprocessing: Any
    holdout_score: float
    dataset_version_id: int | None


@dataclass
class Update:
    """The outcome of one challenger: its run, its version if registered, and the gate's
    decision."""

    version: int | None  # registered version; None for a rejected one (a run record only)
    parent: int
    decision: Decision
    rows: int
    trigger: str
    seconds: float
    run_id: str = ""
    promoted_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "run_id": self.run_id, "parent": self.parent,
                "rows": self.rows,
                "trigger": self.trigger, "seconds": round(self.seconds, 3),
                **self.decision.to_dict()}


@dataclass
class Stats:
    received: int = 0  # feedback messages taken from the queue
    applied: int = 0  # feedback rows committed into an update
    skipped: int = 0  # already applied (a redelivery) or unusable
    expired: int = 0  # the request's inputs were no longer logged
    served_correct: int = 0
    served_scored: int = 0
    updates: list[Update] = field(default_factory=list)

    @property
    def prequential_accuracy(self) -> float | None:
        return self.served_correct / self.served_scored if self.served_scored else None


class Learner:
    """Online learning for one model name; see the module docstring."""

    def __init__(self, settings: Settings, store: Store, model: str, *,
                 queue: Queue | None = None,
                 on_update: Callable[[Update], None] | None = None) -> None:
        self.settings, self.cfg, self.store, self.name = settings, settings.online, store, model
        torch.set_num_threads(self.cfg.threads)
        assert settings.queue_url
        self.queue = queue or open_queue(settings.queue_url, feedback_stream(model))
        self.log = RequestLog.from_settings(settings, store.meta)
        self.processed = ProcessedIds(store.meta.engine, f"learner:{model}")
        self.consumer = f"learner-{model}"
        self.metrics = LearnerMetrics(model)  # served by `stratum learn` (online.exporter)
        self.alerts = AlertManager(store.meta, counter=self.metrics.alerts, cooldown_s=60.0)
        self.on_update = on_update
        self.stats = Stats()
        self.window = FeedbackWindow(self.cfg.recent_window)
        self._pending = Pending()
        self._drifted = False
        # Input drift is about the traffic from now on, not the log's whole history.
        self._drift_seen_at: datetime | None = utcnow()
        self.champion = self._load_champion()
        self.drift.baseline_accuracy = self.champion.holdout_score

    # -- the champion --------------------------------------------------------------------
    def _load_champion(self, version: int | None = None) -> Champion:
        meta, alias = self.store.meta, self.cfg.promote_alias
        try:
            mv = meta.model_version(self.name, version if version is not None else alias)
        except NotFoundError as exc:
            raise ConfigError(
                f"{self.name} has no {alias!r} version to learn from",
                hint=f"promote one first: stratum models alias {self.name}@VERSION {alias}",
            ) from exc
        loaded = load_model(meta, self.store.artifacts, self.name, mv.version)
        model = load_online_model(loaded)
        pipeline = Pipeline.from_artifacts(*loaded.preprocessing) if loaded.preprocessing \
            else None
        if not hasattr(self, "holdout"):
            ref = load_reference(self.store, self.name, loaded.spec.lineage, self.cfg)
            self.holdout, self.replay = ref.holdout, ref.replay
            self.drift = DriftMonitor.from_settings(ref.profile, self.cfg, model=self.name,
                                                    metrics=self.metrics.drift)
        return Champion(mv.version, model, Signature.from_spec(loaded.spec, pipeline),
                        loaded.preprocessing, score(model, *self.holdout),
                        mv.dataset_version_id)

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, *, idle_wait_s: float = 0.5) -> None:
        """Learn until ``stop`` is set (or forever)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self.step(wait_s=idle_wait_s)
            except StratumError as exc:  # e.g. a locked store: log and go on
                log.warning("learner step failed: %s", exc)
                stop.wait(1.0)

    def step(self, wait_s: float = 0.0) -> Update | None:
        """Take what feedback there is; make a challenger when one is due."""
        self._follow_champion()
        if msgs := self._lease(wait_s):
            self._take(msgs)
        self._check_input_drift()
        trigger = self._due()
        return self.update(trigger) if trigger else None

    def drain(self, wait_s: float = 0.5) -> Update | None:
        """Take all the feedback waiting now and make one challenger from it."""
        while msgs := self._lease(wait_s):
            self._take(msgs)
            wait_s = 0.0
        return self.update("manual") if self._pending else None

    def _lease(self, wait_s: float) -> list[Message]:
        return self.queue.get(max_items=max(self.cfg.batch_size, 1),
                              visibility_timeout_s=self.cfg.visibility_timeout_s,
                              consumer=self.consumer, wait_s=wait_s)

    @property
    def pending_requests(self) -> int:
        """Feedback taken and not yet committed into an update."""
        return len(self._pending)

    def _take(self, msgs: list[Message]) -> None:
        fresh: dict[str, list[Message]] = {}
        for msg in msgs:
            rid = str(msg.payload.get("request_id", ""))
            if rid in self._pending:
                self._pending.redelivered(rid, msg.id)
                continue
            fresh.setdefault(rid, []).append(msg)
        if not fresh:
            return
        self.stats.received += sum(len(v) for v in fresh.values())
        done = self.processed.seen(list(fresh))
        if done:  # applied before a crash, not acked: skip them
            self.stats.skipped += len(done)
            self.queue.ack([m.id for rid in done for m in fresh.pop(rid)])
        logged = self.log.get_many(list(fresh))
        correct_flags: list[bool] = []
        for rid, group in fresh.items():
            ids = [m.id for m in group]
            row = self._row(rid, group[0].payload, logged.get(rid))
            self._pending.add(rid, row, ids)
            if row is not None:
                served = np.asarray((logged[rid].prediction or {}).get("classes", []))
                if self.champion.model.spec.task == "classification" and len(served) == len(
                        row.y):
                    classes = np.asarray(self.champion.model.spec.classes or [], dtype=object)
                    flags = [str(classes[c]) == str(s) for c, s in zip(row.y, served,
                                                                       strict=True)]
                    correct_flags += flags
        if correct_flags:
            self.stats.served_correct += sum(correct_flags)
            self.stats.served_scored += len(correct_flags)
            self._fire(self.drift.observe_outcomes(correct_flags))

    def _row(self, rid: str, payload: dict[str, Any], logged: LoggedRequest | None
             ) -> Row | None:
        if logged is None:
            self.stats.expired += 1
            log.info("feedback for %s: its inputs are no longer logged; skipped", rid)
            return None
        try:
            return join(rid, payload.get("labels", []), logged, self.champion.signature,
                        self.champion.model.spec, self.cfg.eval_every)
        except (StratumError, KeyError, ValueError, TypeError) as exc:
            self.stats.skipped += 1
            log.warning("feedback for %s cannot be used: %s", rid, exc)
            return None

    def _due(self) -> str | None:
        if not self._pending:
            return None
        if self._drifted:
            return "drift"
        if self._pending.rows() >= self.cfg.update_every:
            return "batch"
        since = self._pending.since
        if since is not None and time.monotonic() - since >= self.cfg.max_wait_s:
            return "timer"
        return None

    # -- one update -----------------------------------------------------------------------
    def update(self, trigger: str = "manual") -> Update | None:
        """Fine-tune, judge, register, decide, then commit and ack the feedback used."""
        t0 = time.perf_counter()
        pending, self._pending = self._pending, Pending()
        self._drifted = False
        rows = pending.usable()
        self.window.extend(rows)
        keys = pending.request_ids()
        result: Update | None = None
        train, judge = self.window.split()
        if rows and train:
            result = self._challenge(train, judge, rows, trigger, t0)
        with self.store.meta.session() as s:
            new = self.processed.claim(keys, session=s)
            applied = pending.rows(new)
            self.store.meta.add_event("online.feedback", self.name, {
                "requests": len(new), "rows": applied, "trigger": trigger,
                "challenger": result.version if result else None}, session=s)
        self.stats.applied += applied
        self.stats.skipped += len(keys) - len(new)
        self.queue.ack(pending.message_ids())
        if result is not None:
            self.stats.updates.append(result)
            if self.on_update:
                self.on_update(result)
        return result

    def _challenge(self, train: list[Row], judge: list[Row], new: list[Row], trigger: str,
                   t0: float) -> Update:
        champ = self.champion
        x = np.concatenate([r.x for r in train])
        y = np.concatenate([r.y for r in train])
        how = FineTune(self.cfg.steps, self.cfg.learning_rate, self.cfg.batch_size,
                       seed=len(self.stats.updates))
        challenger = champ.model.finetune(x, y, *self.replay, how)
        jx = np.concatenate([r.x for r in judge]) if judge else x[:0]
        jy = np.concatenate([r.y for r in judge]) if judge else y[:0]
        decision = decide(correct(champ.model, jx, jy), correct(challenger, jx, jy),
                          champion_holdout=champ.holdout_score,
                          challenger_holdout=score(challenger, *self.holdout),
                          tolerance=self.cfg.holdout_tolerance, z_min=self.cfg.z_min,
                          min_rows=self.cfg.min_eval_rows)
        kept = keep(self.store, Challenger(
            self.name, champ.model.spec, champ.version, challenger.weights(),
            champ.preprocessing, champ.dataset_version_id, {
                "trigger": trigger, "feedback_rows": sum(len(r.y) for r in new),
                "first_request": new[0].request_id, "last_request": new[-1].request_id,
                "window_rows": self.window.rows}),
            decision, register_rejected=self.cfg.register_rejected)
        update = Update(kept.version, champ.version, decision, sum(len(r.y) for r in new),
                        trigger, time.perf_counter() - t0, kept.run_id)
        meta = self.store.meta
        meta.add_event("online.decision", self.name, update.to_dict())
        if decision.promote:
            assert kept.version is not None  # a winner is always registered
            meta.set_alias(self.name, self.cfg.promote_alias, kept.version,
                           reason=f"online learner: {decision.reason}")
            update.promoted_at = time.time()
            self.champion = Champion(kept.version, challenger, champ.signature,
                                     champ.preprocessing, decision.challenger_holdout,
                                     champ.dataset_version_id)
        log.info("challenger of %s (run %s): %s — %s", self.name, kept.run_id,
                 f"promoted as v{kept.version}" if decision.promote else
                 "rejected" + (f", kept as v{kept.version}" if kept.version else ""),
                 decision.reason)
        return update

    # -- drift and the champion elsewhere --------------------------------------------------
    def _check_input_drift(self) -> None:
        recent = self.log.since(self.name, self._drift_seen_at, limit=self.cfg.drift_window)
        if not recent:
            return
        self._drift_seen_at = recent[-1].ts
        xs = []
        for r in recent:
            try:
                xs.append(self.champion.signature.from_instances(r.instances))
            except StratumError:
                continue
        if xs:
            seen = len(self.drift.reports)
            self._fire(self.drift.observe(np.concatenate(xs)))
            # Each finished window, drifted or not, is kept: the dashboard draws PSI and KS
            # per feature over time from these (alerts alone would show only the peaks).
            for report in self.drift.reports[seen:]:
                self.store.meta.add_event("online.drift", self.name, report.to_dict(top=20))

    def _fire(self, alerts: list[Alert]) -> None:
        if alerts:
            self.alerts.fire(alerts)
            self._drifted = True  # an update is due at once

    def _follow_champion(self) -> None:
        """Someone else moved the alias (a rollback, a manual promote): learn from that."""
        current = self.store.meta.aliases(self.name).get(self.cfg.promote_alias)
        if current is not None and current != self.champion.version:
            log.info("%s moved to v%d outside the learner; following", self.cfg.promote_alias,
                     current)
            self.champion = self._load_champion(current)
