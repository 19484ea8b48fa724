"""Real services for tests: the machine's PostgreSQL and Redis, moto's S3 server, and our
own processes started on 127.0.0.1 and waited on until ready.

A test that needs PostgreSQL or Redis fails in CI (CI=true) when they are missing; outside
CI it skips, loudly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("STRATUM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("STRATUM_TEST_REDIS", "redis://127.0.0.1:6379/0")


def missing_service(what: str, why: object) -> None:
    msg = f"{what} is not reachable ({why}); this test needs the real service"
    if IN_CI:
        pytest.fail(msg + " and CI=true", pytrace=False)
    print(f"\n*** SKIPPING: {msg} ***", file=sys.stderr)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None,
              verify: Any = True) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            r = httpx.get(url, timeout=2.0, verify=verify)
            if r.status_code < 500:
                return
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


@contextmanager
def started(
    args: Sequence[str], *, ready_url: str | None = None, env: dict[str, str] | None = None,
    timeout: float = 60.0, log: Path | None = None, verify: Any = True,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a real process (its own session), wait for ``ready_url``, always tear down."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        list(args), env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        if ready_url:
            try:
                wait_http(ready_url, timeout, proc, verify)
            except (TimeoutError, RuntimeError) as exc:
                tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
                raise RuntimeError(f"{' '.join(args)} did not become ready: {exc}\n{tail}") from exc
        yield proc
    finally:
        stop_group(proc)
        if log:
            out.close()  # type: ignore[union-attr]


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def fresh_pg_database() -> tuple[str, str]:
    """Create an empty database on the machine's PostgreSQL; returns (url, name)."""
    from sqlalchemy import create_engine, text

    name = f"stratum_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:
        missing_service("PostgreSQL at " + PG_ADMIN_URL, exc)
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name, name


def drop_pg_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
