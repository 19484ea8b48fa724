"""The audit log: every admin action, and every refused attempt at one — who (an API key's
id and name, ``supervisor``, or ``anonymous``), from where (the peer the server saw), which
component and action, on what, the HTTP status it ended with, and what changed.

Servers record through an ``Auditor``: it never raises (an action is not undone or failed
because its record could not be written; the failure is logged), writes off the event loop,
and in a process without a metadata store (a static gateway) writes the same fields as a
log line on the ``stratum.audit`` logger instead. Credentials never reach a record: actors
are key *ids*, and detail keys that name a secret are masked before writing.

    log = AuditLog(meta)
    log.write(AuditEntry("key:3fa1 ops", "127.0.0.1:50312", "control", "scale", "mnist",
                         200, {"before": {"replicas": 2}, "after": {"replicas": 4}}))
    log.entries(action="scale", limit=10)
    log.prune(before=utcnow() - timedelta(days=90))  # retention: the leader, hourly

Records are kept until pruned; the leading control plane prunes those older than
``control.audit_retention_days`` (``control.retention``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, delete, select

from stratum.store.db import session_factory
from stratum.store.metadata import MetadataStore
from stratum.store.models import AuditRecord

log = logging.getLogger("stratum.audit")

COMPONENTS = ("control", "gateway", "replica", "cli")
# Rows per DELETE when pruning: each batch is its own short transaction, so the writers
# (every admin action) never wait long behind retention.
PRUNE_BATCH = 1000
# Detail keys whose values are never stored, whatever a caller puts there.
_SECRET_WORDS = ("secret", "token", "password", "hash")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    actor: str  # "key:ID NAME", "supervisor", "anonymous", "os:USER" (the CLI)
    source: str  # "IP:PORT" as the server saw the peer; "local" for the CLI
    component: str  # one of COMPONENTS
    action: str  # "deploy", "scale", "routes.put", "swap", "keys.create", ...
    target: str  # the deployment, model or key acted on ("" when unknown)
    outcome: int  # the HTTP status answered (200 done, 401/403 refused, ...)
    detail: dict[str, Any] = field(default_factory=dict)  # what changed
    ts: datetime | None = None  # set by the store
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ts"] = self.ts.isoformat() if self.ts else None
        return out


class AuditLog:
    """Write and read audit records in the metadata database (SQLite or PostgreSQL)."""

    def __init__(self, store: MetadataStore | Engine) -> None:
        engine = store.engine if isinstance(store, MetadataStore) else store
        self._sessions = session_factory(engine, "the audit log")

    def write(self, entry: AuditEntry) -> None:
        row = AuditRecord(actor=entry.actor[:200], source=entry.source[:200],
                          component=entry.component, action=entry.action[:64],
                          target=entry.target[:200], outcome=entry.outcome,
                          detail=_masked(entry.detail))
        with self._sessions() as s, s.begin():
            s.add(row)

    def entries(self, *, since: datetime | None = None, actor: str | None = None,
                action: str | None = None, component: str | None = None,
                limit: int = 100) -> list[AuditEntry]:
        """Newest first. ``actor`` matches a part (``key:3fa1``, ``supervisor``);
        ``action`` is exact or a glob with ``*`` (``keys.*``)."""
        q = select(AuditRecord)
        if since is not None:
            q = q.where(AuditRecord.ts >= _aware(since))
        if actor:
            q = q.where(AuditRecord.actor.contains(actor, autoescape=True))
        if action:
            q = (q.where(AuditRecord.action.like(action.replace("*", "%"))) if "*" in action
                 else q.where(AuditRecord.action == action))
        if component:
            q = q.where(AuditRecord.component == component)
        with self._sessions() as s:
            rows = s.scalars(q.order_by(AuditRecord.id.desc()).limit(limit))
            return [AuditEntry(r.actor, r.source, r.component, r.action, r.target, r.outcome,
                               r.detail or {}, _aware(r.ts), r.id) for r in rows]

    def prune(self, before: datetime, *, batch: int = PRUNE_BATCH) -> int:
        """Delete the records older than ``before``, at most ``batch`` per transaction;
        returns how many went."""
        cutoff, gone = _aware(before), 0
        while True:
            # The ts index finds a batch; ``id IN (... LIMIT n)`` bounds a DELETE on SQLite
            # and PostgreSQL alike (neither takes DELETE ... LIMIT portably).
            oldest = select(AuditRecord.id).where(AuditRecord.ts < cutoff).limit(batch)
            with self._sessions() as s, s.begin():
                res = s.execute(delete(AuditRecord).where(AuditRecord.id.in_(oldest))
                                .execution_options(synchronize_session=False))
                n = int(getattr(res, "rowcount", 0) or 0)
            gone += n
            if n < batch:
                return gone


class Auditor:
    """How a server records: ``await auditor.record(...)`` never raises and never blocks
    the event loop. ``log`` None: the process has no metadata store; the record becomes a
    log line (INFO, WARNING when refused) with the same fields.

    Refusals are coalesced: one record per actor, client address and action every
    ``refusal_window_s``, the next one counting those left out (``detail.repeated``), so a
    flood of unauthenticated calls cannot turn into a flood of database writes.
    """

    def __init__(self, component: str, log: AuditLog | None, *,
                 refusal_window_s: float = 1.0) -> None:
        assert component in COMPONENTS, component
        self.component = component
        self.log = log
        self.refusal_window_s = refusal_window_s
        self._refusals: dict[tuple[str, str, str], tuple[float, int]] = {}

    def entry(self, actor: str, source: str, action: str, target: str, outcome: int,
              detail: dict[str, Any] | None = None) -> AuditEntry:
        return AuditEntry(actor, source, self.component, action, target, outcome,
                          _masked(detail or {}))

    async def record(self, actor: str, source: str, action: str, target: str, outcome: int,
                     detail: dict[str, Any] | None = None) -> None:
        entry = self._coalesced(self.entry(actor, source, action, target, outcome, detail))
        if entry is None:
            return
        if self.log is None:
            self._write(entry)
        else:
            await asyncio.to_thread(self._write, entry)

    def record_now(self, actor: str, source: str, action: str, target: str, outcome: int,
                   detail: dict[str, Any] | None = None) -> None:
        """``record`` for synchronous callers (the CLI)."""
        self._write(self.entry(actor, source, action, target, outcome, detail))

    def _coalesced(self, entry: AuditEntry) -> AuditEntry | None:
        """``entry``, None when an equal refusal was recorded within the window, or with
        the count of those left out since then."""
        if entry.outcome not in (401, 403):
            return entry
        # The address without the port: a client opens a new connection per attempt.
        key = (entry.actor, entry.source.rpartition(":")[0] or entry.source, entry.action)
        now = time.monotonic()
        last, left_out = self._refusals.get(key, (-math.inf, 0))
        if now - last < self.refusal_window_s:
            self._refusals[key] = (last, left_out + 1)
            return None
        if len(self._refusals) > 10_000:
            self._refusals.clear()
        self._refusals[key] = (now, 0)
        return replace(entry, detail={**entry.detail, "repeated": left_out}) if left_out \
            else entry

    def _write(self, entry: AuditEntry) -> None:
        if self.log is None:
            _log_line(entry, "")
            return
        try:
            self.log.write(entry)
        except Exception as exc:  # the action stands; its record goes to the log instead
            _log_line(entry, f" (not stored: {type(exc).__name__}: {exc})", logging.ERROR)


def _log_line(entry: AuditEntry, note: str, level: int | None = None) -> None:
    if level is None:
        level = logging.WARNING if entry.outcome in (401, 403) else logging.INFO
    doc = entry.to_dict()
    doc.pop("id")
    doc.pop("ts")
    log.log(level, "audit %s%s", orjson.dumps(doc, default=str).decode(), note,
            extra={"audit": doc})


def _aware(ts: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _masked(detail: dict[str, Any]) -> dict[str, Any]:
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: "***" if any(w in str(k).lower() for w in _SECRET_WORDS) else walk(v)
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return value
    out: dict[str, Any] = walk(detail)
    return out


__all__ = ["COMPONENTS", "AuditEntry", "AuditLog", "Auditor"]
