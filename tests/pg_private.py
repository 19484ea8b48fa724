"""A PostgreSQL server of a test's own: initdb into a fresh folder, started on a free port,
restartable (``restart``) without touching the machine's server, which other tests and
services use.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
``postgres`` user (Debian's package makes it) through ``runuser``. A machine without the
server binaries fails the test in CI (``missing_service``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests.services import free_port, missing_service


def _bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


class PrivatePostgres:
    def __init__(self, bindir: Path, data: Path, port: int) -> None:
        self.bindir, self.data, self.port = bindir, data, port
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/stratum"

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {out.stderr[-2000:]}")

    def _ctl(self, action: str, *extra: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l",
                  str(self.data / "server.log"), action, *extra)

    def start(self) -> None:
        self._ctl("start", "-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def restart(self) -> float:
        """Restart with a fast shutdown (every session is cut, as a failover would);
        returns the seconds it was down."""
        t0 = time.monotonic()
        self._ctl("restart", "-m", "fast")
        return time.monotonic() - t0

    def answers(self) -> bool:
        try:
            with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres "
                                 "dbname=postgres connect_timeout=2"):
                return True
        except psycopg.OperationalError:
            return False


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    bindir = _bin()
    if bindir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        missing_service("PostgreSQL server binaries (initdb, pg_ctl)", "/usr/lib/postgresql")
        raise AssertionError("unreachable")
    # Not under pytest's tmp folder: the server's user must be able to reach it.
    data = Path(tempfile.mkdtemp(prefix="stratum-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    pg = PrivatePostgres(bindir, data, free_port())
    try:
        pg._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                "--no-sync")
        pg.start()
        with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE stratum")
        yield pg
    finally:
        try:
            pg.stop()
        except Exception:  # already down, or never started: the folder goes anyway
            pass
        shutil.rmtree(data, ignore_errors=True)


__all__ = ["PrivatePostgres", "private_postgres"]
