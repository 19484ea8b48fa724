"""Retention of the audit log, run by the leading control plane beside the supervisor.

Every admin action and refused attempt is a row of ``audit_log``; without a bound the
table grows for as long as the home lives. The leader deletes the records older than
``control.audit_retention_days`` (0: none, ever) when it starts leading and then every
``PRUNE_EVERY_S``, in batches (``AuditLog.prune``), so a backlog never becomes one long
DELETE that holds the writers up. Each pass logs how many went and counts them
(``stratum_control_audit_pruned_total``). A standby prunes nothing: the leader's task
stops with its leadership, and the next leader starts its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from stratum.config.settings import ControlSettings
from stratum.control.metrics import ControlMetrics
from stratum.store.audit import AuditLog
from stratum.store.models import utcnow

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0  # the cutoff moves by days: once an hour is plenty


class AuditRetention:
    def __init__(self, cfg: ControlSettings, audit: AuditLog, metrics: ControlMetrics, *,
                 every_s: float = PRUNE_EVERY_S,
                 now: Callable[[], datetime] = utcnow) -> None:
        self.cfg, self.audit, self.metrics = cfg, audit, metrics
        self.every_s, self.now = every_s, now

    async def run(self) -> None:
        while True:
            await self.prune()
            await asyncio.sleep(self.every_s)

    async def prune(self) -> int:
        """One pass: how many records went (0 when retention is off or the store is
        away; the next pass tries again)."""
        days = self.cfg.audit_retention_days
        if days <= 0:
            return 0
        cutoff = self.now() - timedelta(days=days)
        try:
            gone = await asyncio.to_thread(self.audit.prune, cutoff)
        except Exception:  # the leader goes on; the records wait for the next pass
            log.exception("audit log: could not prune the records older than %d days", days)
            return 0
        self.metrics.audit_pruned.inc(gone)
        log.info("audit log: pruned %d records older than %d days (before %s)", gone, days,
                 cutoff.isoformat(timespec="seconds"), extra={"pruned": gone})
        return gone


__all__ = ["PRUNE_EVERY_S", "AuditRetention"]
