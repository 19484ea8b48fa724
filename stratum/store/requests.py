"""The request log: what a model saw, keyed by request id, for the feedback join.

Replicas and the gateway log sampled requests (``log``, or ``log_many`` batched off the
hot path); the feedback route and the online learner look them up (``get``,
``get_many``). Sampling is decided by a hash of the request id, so every process makes
the same choice for one request. Columns declared PII are masked before anything is
stored (keyed with ``online.log_pii_key_file``). A row lives ``retention_s`` seconds; an
expired row is invisible to ``get`` at once. The log is bounded: every ``max_rows // 10``
rows it writes, a writer deletes the expired rows and all but the ``max_rows`` newest
(``prune``), so one writer never lets it grow past 110% of the bound.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, delete, select

from stratum.config import Settings
from stratum.errors import ConfigError, DataError
from stratum.security.masking import mask
from stratum.store.db import session_factory
from stratum.store.metadata import MetadataStore
from stratum.store.models import RequestRecord, utcnow

log = logging.getLogger(__name__)

_CHUNK = 500  # ids per IN (...) lookup, under driver parameter limits
_COLUMNS = "request_id, model, version, ts, expires_at, inputs, prediction"
# Driver-level statements (positional parameters, executemany): replicas write every
# request they serve, and SQLAlchemy's per-row parameter processing cost more than SQLite.
_INSERT_SQLITE = f"INSERT OR IGNORE INTO request_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_INSERT_PG = (f"INSERT INTO request_log ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, "
              "CAST(%s AS JSON), CAST(%s AS JSON)) ON CONFLICT (request_id) DO NOTHING")


@dataclass(frozen=True)
class LoggedRequest:
    """One logged request, as stored (inputs already masked)."""

    request_id: str
    model: str
    version: int | None
    inputs: Any
    prediction: Any
    ts: datetime

    @property
    def instances(self) -> list[Any]:
        """The request's inputs one per instance: a single-instance request is logged bare."""
        return self.inputs if isinstance(self.inputs, list) else [self.inputs]


class RequestLog:
    """Sampled, masked, expiring log of request inputs over the metadata database."""

    def __init__(
        self, store: MetadataStore | Engine, *, sample_rate: float = 1.0,
        retention_s: float = 7 * 24 * 3600, pii_columns: Collection[str] = (),
        mask_key: bytes | None = None, max_rows: int | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise DataError(f"request log sample rate must be in [0, 1], got {sample_rate}")
        self.max_rows = max_rows
        # Pruning costs an index scan of max_rows entries: once per tenth of the bound.
        self.prune_every = max(1, max_rows // 10) if max_rows else 0
        self._unpruned = 0
        self.engine = store.engine if isinstance(store, MetadataStore) else store
        self.sample_rate = sample_rate
        self.retention = timedelta(seconds=retention_s)
        self.pii_columns = frozenset(pii_columns)
        self.mask_key = mask_key
        self._sessions = session_factory(self.engine, "the request log")
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._insert_many = _INSERT_SQLITE if self._sqlite else _INSERT_PG

    @classmethod
    def from_settings(cls, settings: Settings, store: MetadataStore | Engine) -> RequestLog:
        o = settings.online
        key = None
        if o.log_pii_key_file is not None:
            key = read_mask_key(settings.home / o.log_pii_key_file)
        return cls(store, sample_rate=o.log_sample_rate, retention_s=o.log_retention_s,
                   pii_columns=o.log_pii_columns, mask_key=key, max_rows=o.log_max_rows)

    def sampled(self, request_id: str) -> bool:
        """Whether ``request_id`` falls in the sample (the same answer in every process)."""
        if self.sample_rate >= 1.0:
            return True
        h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
        return h / 2**64 < self.sample_rate

    def log(
        self, request_id: str, model: str, version: int | None, inputs: Any, prediction: Any,
        ts: datetime | None = None, *, feature_names: Sequence[str] | None = None,
    ) -> bool:
        """Log one request; returns False when it was not sampled (or already logged)."""
        entry = LoggedRequest(request_id, model, version, inputs, prediction, ts or utcnow())
        return self.log_many([entry], feature_names=feature_names) == 1

    def log_many(
        self, entries: Iterable[LoggedRequest | Mapping[str, Any]], *,
        feature_names: Sequence[str] | None = None,
    ) -> int:
        """Log a batch in few statements; returns how many rows were written.

        Entries are ``LoggedRequest`` or mappings with its field names (``ts`` optional).
        A request id logged before is skipped, so a retried batch is harmless.
        """
        # Replicas call this for every request they serve: one driver-level executemany
        # over rows serialised here (orjson, numpy as is), nothing compiled per batch.
        sqlite = self._sqlite
        rows = []
        for e in entries:
            entry = e if isinstance(e, LoggedRequest) else _entry(e)
            _check_id(entry.request_id)
            if not self.sampled(entry.request_id):
                continue
            ts = _aware(entry.ts)
            expires = ts + self.retention
            inputs = mask(entry.inputs, self.pii_columns, feature_names=feature_names,
                          key=self.mask_key) if self.pii_columns else entry.inputs
            rows.append((
                entry.request_id, entry.model, entry.version,
                _sqlite_ts(ts) if sqlite else ts, _sqlite_ts(expires) if sqlite else expires,
                _dumps(inputs), _dumps(entry.prediction),
            ))
        if not rows:
            return 0
        with self.engine.begin() as conn:
            written = int(conn.exec_driver_sql(self._insert_many, rows).rowcount or 0)
        self._unpruned += written
        if self.prune_every and self._unpruned >= self.prune_every:
            self.prune()
        return written

    def get(self, request_id: str) -> LoggedRequest | None:
        """The logged request, or None if it was never logged, not sampled or expired."""
        return self.get_many([request_id]).get(request_id)

    def get_many(self, request_ids: Sequence[str]) -> dict[str, LoggedRequest]:
        """``{request_id: LoggedRequest}`` for the ids that are logged and not expired."""
        out: dict[str, LoggedRequest] = {}
        now = utcnow()
        ids = list(dict.fromkeys(request_ids))
        # The feedback route looks ids up here: a restarting database is a 503.
        with self._sessions() as s:
            for i in range(0, len(ids), _CHUNK):
                q = select(RequestRecord).where(
                    RequestRecord.request_id.in_(ids[i:i + _CHUNK]),
                    RequestRecord.expires_at > now,
                )
                for r in s.scalars(q):
                    out[r.request_id] = LoggedRequest(
                        r.request_id, r.model, r.version, r.inputs, r.prediction,
                        _aware(r.ts))
        return out

    def since(self, model: str, after: datetime | None, limit: int = 1000
              ) -> list[LoggedRequest]:
        """Requests of ``model`` logged after ``after`` (oldest first), for input drift."""
        q = select(RequestRecord).where(RequestRecord.model == model)
        if after is not None:
            q = q.where(RequestRecord.ts > _aware(after))
        with self._sessions() as s:
            rows = s.scalars(q.order_by(RequestRecord.ts).limit(limit))
            return [LoggedRequest(r.request_id, r.model, r.version, r.inputs, r.prediction,
                                  _aware(r.ts)) for r in rows]

    def prune(self) -> int:
        """Delete the expired rows and all but the ``max_rows`` that expire last (the
        newest); returns how many went."""
        self._unpruned = 0
        gone = self.purge_expired()
        if not self.max_rows:
            return gone
        with self._sessions() as s, s.begin():
            # The (max_rows + 1)-th newest expiry, on the expires_at index; ties go too.
            cutoff = s.scalar(select(RequestRecord.expires_at)
                              .order_by(RequestRecord.expires_at.desc())
                              .offset(self.max_rows).limit(1))
            if cutoff is None:
                return gone
            res = s.execute(delete(RequestRecord).where(RequestRecord.expires_at <= cutoff))
            over = int(getattr(res, "rowcount", 0) or 0)
        log.info("request log: dropped %d rows over its bound of %d", over, self.max_rows)
        return gone + over

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete expired rows; returns how many."""
        with self._sessions() as s, s.begin():
            res = s.execute(
                delete(RequestRecord).where(RequestRecord.expires_at <= _aware(now or utcnow()))
            )
            return int(getattr(res, "rowcount", 0) or 0)


def read_mask_key(path: Path) -> bytes:
    """The keyed-masking key from ``path`` (surrounding whitespace ignored)."""
    hint = (f"make one: python -c 'import secrets; print(secrets.token_hex(32))' > {path}"
            f" && chmod 600 {path}")
    try:
        key = path.read_bytes().strip()
        loose = path.stat().st_mode & 0o077
    except OSError as exc:
        raise ConfigError(f"online.log_pii_key_file {path} cannot be read: {exc.strerror}",
                          hint=hint) from exc
    if len(key) < 16:
        raise ConfigError(f"the PII masking key in {path} is {len(key)} bytes; it needs 16 "
                          "or more", hint=hint)
    if loose:
        log.warning("the PII masking key %s can be read by other users (mode %o); chmod 600 "
                    "it", path, path.stat().st_mode & 0o777)
    return key


def _entry(m: Mapping[str, Any]) -> LoggedRequest:
    try:
        return LoggedRequest(
            str(m["request_id"]), str(m["model"]), m.get("version"), m["inputs"],
            m.get("prediction"), m.get("ts") or utcnow(),
        )
    except KeyError as exc:
        raise DataError(f"request log entry misses the field {exc.args[0]!r}") from exc


def _check_id(request_id: str) -> None:
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 64:
        raise DataError(f"request id must be a string of 1-64 characters, got {request_id!r}")


def _aware(ts: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
                        ).decode()


def _sqlite_ts(ts: datetime) -> str:
    # The text SQLAlchemy's SQLite DateTime stores (UTC, "YYYY-MM-DD HH:MM:SS.ffffff"), so
    # its reads and comparisons work; isoformat is several times cheaper than strftime.
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
