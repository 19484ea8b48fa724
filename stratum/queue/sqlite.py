"""The embedded queue: one SQLite file in WAL mode, shared by local processes.

Every state change is one ``BEGIN IMMEDIATE`` transaction, which takes SQLite's write
lock up front: two consumers leasing at once serialise, so one message is never leased
to both. A lease stamps ``delivered_at``; a message delivered at least
``visibility_timeout_s`` ago (the reader's timeout, as with Redis' XAUTOCLAIM min-idle
time) is handed out again. An ack deletes the row.
Dedupe keys live in their own table with a time to live, so they outlast the message.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from stratum.errors import QueueError
from stratum.queue.base import Message

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    payload BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    delivered_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    consumer TEXT
);
CREATE INDEX IF NOT EXISTS ix_messages_stream ON messages (stream, id);
CREATE TABLE IF NOT EXISTS dedupe (
    stream TEXT NOT NULL,
    key TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (stream, key)
);
"""
# Expired dedupe keys are swept every this many puts, to keep the table small.
_SWEEP_EVERY = 1000


class SqliteQueue:
    """At-least-once queue over a SQLite file (``sqlite:///path/queue.db``)."""

    def __init__(self, path: str | Path, stream: str = "feedback",
                 dedupe_ttl_s: float = 7 * 24 * 3600) -> None:
        self.path = Path(path)
        self.stream = stream
        self.dedupe_ttl_s = dedupe_ttl_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._puts = 0
        with self._lock:
            try:
                self._connection().executescript(_SCHEMA)
            except sqlite3.Error as exc:
                raise QueueError(f"cannot create the queue in {self.path}: {exc}") from exc

    # -- connection -----------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross fork(); reopen in a child process.
        if self._conn is None or self._pid != os.getpid():
            try:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode survives a killed process; only power loss can cost
                # the last commits.
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=30000")
            except sqlite3.Error as exc:
                raise QueueError(f"cannot open queue file {self.path}: {exc}") from exc
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise QueueError(f"queue file {self.path} is locked or unreadable: {exc}") from exc
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    # -- Queue ----------------------------------------------------------------------
    def put(self, payload: dict[str, Any], dedupe_key: str | None = None) -> str | None:
        data = _encode(payload)
        now = time.time()
        with self._tx() as c:
            if dedupe_key is not None:
                c.execute("DELETE FROM dedupe WHERE stream=? AND key=? AND expires_at<?",
                          (self.stream, dedupe_key, now))
                cur = c.execute(
                    "INSERT OR IGNORE INTO dedupe (stream, key, expires_at) VALUES (?,?,?)",
                    (self.stream, dedupe_key, now + self.dedupe_ttl_s),
                )
                if cur.rowcount == 0:
                    return None
            cur = c.execute(
                "INSERT INTO messages (stream, payload, enqueued_at) VALUES (?,?,?)",
                (self.stream, data, now),
            )
            self._puts += 1
            if self._puts % _SWEEP_EVERY == 0:
                c.execute("DELETE FROM dedupe WHERE expires_at<?", (now,))
            return str(cur.lastrowid)

    def get(self, max_items: int = 64, visibility_timeout_s: float = 30.0,
            consumer: str = "default", wait_s: float = 0.0) -> list[Message]:
        if max_items < 1:
            raise QueueError(f"max_items must be at least 1, got {max_items}")
        deadline = time.monotonic() + wait_s
        while True:
            batch = self._lease(max_items, visibility_timeout_s, consumer)
            if batch or time.monotonic() >= deadline:
                return batch
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _lease(self, max_items: int, vt: float, consumer: str) -> list[Message]:
        now = time.time()
        with self._tx() as c:
            rows = c.execute(
                "SELECT id, payload, attempts FROM messages WHERE stream=? "
                "AND (delivered_at IS NULL OR delivered_at<=?) ORDER BY id LIMIT ?",
                (self.stream, now - vt, max_items),
            ).fetchall()
            if not rows:
                return []
            ids = [r[0] for r in rows]
            marks = ",".join("?" * len(ids))
            c.execute(
                f"UPDATE messages SET delivered_at=?, attempts=attempts+1, consumer=? "
                f"WHERE id IN ({marks})", (now, consumer, *ids),
            )
        return [Message(str(i), orjson.loads(p), a + 1) for i, p, a in rows]

    def ack(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        try:
            keys = [int(i) for i in ids]
        except ValueError as exc:
            raise QueueError(f"queue {self.stream!r}: not a message id: {exc}") from exc
        marks = ",".join("?" * len(keys))
        with self._tx() as c:
            cur = c.execute(f"DELETE FROM messages WHERE stream=? AND id IN ({marks})",
                            (self.stream, *keys))
            return cur.rowcount

    def pending(self) -> int:
        return self._count("AND attempts>0", ())

    def size(self) -> int:
        return self._count("", ())

    def _count(self, where: str, args: tuple[Any, ...]) -> int:
        with self._lock:
            row = self._connection().execute(
                f"SELECT COUNT(*) FROM messages WHERE stream=? {where}", (self.stream, *args)
            ).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


def _encode(payload: dict[str, Any]) -> bytes:
    if not isinstance(payload, dict):
        raise QueueError(f"a queue message must be a JSON object, got {type(payload).__name__}")
    try:
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise QueueError(f"queue message is not JSON-serialisable: {exc}") from exc
