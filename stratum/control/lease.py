"""Who may run the supervisor: exactly one control plane at a time.

- Embedded (SQLite): an exclusive ``flock`` on ``<home>/control.lock``. The kernel drops it
  when the holder dies, however it dies, so a restart never finds a stale lock; a second
  instance is refused at start with the holder's pid.
- PostgreSQL: a session-level advisory lock held on a connection of its own. Instances
  that do not get it stand by and try again every ``control.lease_poll_s``; when the
  leader dies its connection closes and the server frees the lock at once. The leader
  checks its connection every poll too: a leader that lost it (a network partition, a
  restarted database) stops leading at once (it exits; its processes stay for the next).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from stratum.config import Settings

# One lock per database: "stratum-control" as 8 bytes.
_PG_KEY = int.from_bytes(b"strcontr", "big") & 0x7FFF_FFFF_FFFF_FFFF


class Lease(Protocol):
    what: str  # for messages: "the lock file …", "the PostgreSQL advisory lock"
    standby: bool  # whether a refused instance should wait for it rather than exit

    def try_acquire(self) -> bool: ...
    def held(self) -> bool: ...
    def release(self) -> None: ...


class FileLease:
    standby = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.what = f"the lock file {path}"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class PgLease:
    standby = True
    what = "the PostgreSQL advisory lock"

    def __init__(self, url: str) -> None:
        # A connection of its own, outside any pool: the lock lives exactly as long.
        parsed = make_url(url)
        if parsed.drivername == "postgresql":  # psycopg 3, as the store uses
            parsed = parsed.set(drivername="postgresql+psycopg")
        self._engine = create_engine(parsed, poolclass=NullPool,
                                     connect_args={"connect_timeout": 3})
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        try:
            conn = self._engine.connect()
        except Exception:
            return False  # the database is away: nobody can lead; try again later
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                    {"k": _PG_KEY}).scalar())
            conn.commit()
        except Exception:
            conn.close()
            return False
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def held(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except Exception:
            self.release()
            return False

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None


class Unguarded:
    """No lease at all: a supervisor embedded in a test or a program that guards itself."""

    standby = False
    what = "no lease"

    def try_acquire(self) -> bool:
        return True

    def held(self) -> bool:
        return True

    def release(self) -> None:
        pass


def lease_for(settings: Settings) -> Lease:
    url = str(settings.metadata_url)
    if url.startswith("postgresql"):
        return PgLease(url)
    home = settings.home.expanduser().resolve()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return FileLease(home / "control.lock")


__all__ = ["FileLease", "Lease", "PgLease", "Unguarded", "lease_for"]
