"""Apply-once for at-least-once delivery: remember which messages a consumer applied.

A consumer claims the keys of a batch (message ids or, better, business keys such as a
request id) in the same database transaction as the effect; keys claimed before come
back filtered out, so a redelivered message is skipped. Claims live in the metadata
database (table ``processed_messages``), on SQLite or PostgreSQL.

    new = processed.claim([m.payload["request_id"] for m in batch], session=s)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from stratum.store.db import session_factory
from stratum.store.models import ProcessedMessage, utcnow


class ProcessedIds:
    """The set of keys one consumer (e.g. ``learner:mnist``) has applied."""

    def __init__(self, engine: Engine, consumer: str) -> None:
        self.engine = engine
        self.consumer = consumer
        self._sessions = session_factory(engine, "the apply-once claims")
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    def claim(self, keys: Sequence[str], session: Session | None = None) -> list[str]:
        """Record ``keys``; return those not recorded before, in input order.

        Pass ``session`` to make the claim part of the caller's transaction, so that the
        effect and the claim commit (or roll back) together.
        """
        unique = list(dict.fromkeys(str(k) for k in keys))
        if not unique:
            return []
        now = utcnow()
        stmt = (
            self._insert(ProcessedMessage)
            .values([{"consumer": self.consumer, "key": k, "ts": now} for k in unique])
            .on_conflict_do_nothing()
            .returning(ProcessedMessage.key)
        )
        if session is not None:
            fresh = set(session.scalars(stmt))
        else:
            with self._sessions() as s, s.begin():
                fresh = set(s.scalars(stmt))
        return [k for k in unique if k in fresh]

    def seen(self, keys: Sequence[str]) -> set[str]:
        """The subset of ``keys`` already claimed (read-only)."""
        with self._sessions() as s:
            rows = s.scalars(
                select(ProcessedMessage.key).where(
                    ProcessedMessage.consumer == self.consumer,
                    ProcessedMessage.key.in_([str(k) for k in keys]),
                )
            )
            return set(rows)

    def purge(self, older_than_s: float) -> int:
        """Forget claims older than ``older_than_s`` (longer than any redelivery)."""
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        with self._sessions() as s, s.begin():
            res = s.execute(
                delete(ProcessedMessage).where(
                    ProcessedMessage.consumer == self.consumer, ProcessedMessage.ts < cutoff
                )
            )
            return int(getattr(res, "rowcount", 0) or 0)
