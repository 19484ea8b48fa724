"""The machine's Redis and PostgreSQL, restarted for ``stratum chaos --include-services``.

Only the services of this machine, on their usual ports, and only when the settings point
the queue (Redis) or the metadata store (PostgreSQL) at them: a restart disturbs every
other user of the service, which is why the scenarios need the explicit flag. Each restart
is followed, whatever happened, by ``ensure_*``, which starts the service again if it does
not answer.

Redis is started as this machine's CI runs it: no persistence (``--save "" --appendonly
no``), so what its streams held before the restart is gone after it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

LOCAL = {"127.0.0.1", "localhost", "::1", ""}
# Which services: module constants, so that a trial run can point them at private ones.
REDIS_PORT = 6379
REDIS_DIR, REDIS_LOG = "/var/lib/redis", "/var/log/redis/ci.log"
PG_PORT, PG_CLUSTER = 5432, "main"


def _redis_start() -> list[str]:
    return ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
            "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no",
            "--dir", REDIS_DIR, "--logfile", REDIS_LOG]


def local_redis(queue_url: str | None) -> bool:
    """Whether the queue is this machine's Redis (on ``REDIS_PORT``)."""
    if not queue_url:
        return False
    u = urlsplit(queue_url)
    return u.scheme == "redis" and (u.hostname or "") in LOCAL and \
        (u.port or 6379) == REDIS_PORT


def local_postgres(metadata_url: str | None) -> bool:
    """Whether the metadata store is this machine's PostgreSQL (on ``PG_PORT``)."""
    if not metadata_url or not metadata_url.startswith("postgresql"):
        return False
    u = make_url(metadata_url)
    return (u.host or "") in LOCAL and (u.port or 5432) == PG_PORT


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def redis_up() -> bool:
    try:
        out = subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == "PONG"


def restart_redis(timeout: float = 30.0) -> None:
    """``redis-cli shutdown nosave``, then start it again and wait for PONG."""
    subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"],
                   capture_output=True, timeout=30)
    deadline = time.monotonic() + timeout
    while _answers(REDIS_PORT) and time.monotonic() < deadline:
        time.sleep(0.05)
    ensure_redis(timeout)


def ensure_redis(timeout: float = 30.0) -> None:
    if redis_up():
        return
    subprocess.run(_redis_start(), capture_output=True, timeout=30, check=True)
    _wait(redis_up, "Redis", timeout)


def _cluster() -> list[str]:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    if not versions:
        raise RuntimeError("no PostgreSQL cluster under /etc/postgresql")
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], PG_CLUSTER]


def postgres_up() -> bool:
    try:
        out = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(PG_PORT)],
                             capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return _answers(PG_PORT)
    return out.returncode == 0


def restart_postgres(timeout: float = 60.0) -> None:
    """``pg_ctlcluster VERSION main restart`` (fast shutdown: sessions are cut)."""
    subprocess.run([*_cluster(), "restart"], capture_output=True, timeout=timeout)
    ensure_postgres(timeout)


def ensure_postgres(timeout: float = 60.0) -> None:
    if postgres_up():
        return
    subprocess.run([*_cluster(), "start"], capture_output=True, timeout=timeout)
    _wait(postgres_up, "PostgreSQL", timeout)


def _wait(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come back within {timeout:.0f} s")
        time.sleep(0.1)


__all__ = ["ensure_postgres", "ensure_redis", "local_postgres", "local_redis",
           "postgres_up", "redis_up", "restart_postgres", "restart_redis"]
