"""Hard HTTP limits on every server we run, as real processes spoken to over raw sockets:
the gateway's built-in server, the gateway on uvicorn (``--uvicorn``), a replica (uvicorn)
and the control plane (uvicorn + FastAPI). Each gets small timeouts and a small
connection cap; every limit must give its 4xx or a closed connection within the configured
time, never a hang, and the server must keep serving normal requests promptly, also during
an idle flood past its cap."""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stratum.config import HttpLimits, Settings, load_settings
from stratum.security.tokens import REPLICA_SECRET_ENV, REPLICA_SECRET_HEADER
from stratum.store import Store
from tests.integration.gateway_fixtures import REPLICA_SECRET, SAMPLE, register_tiny
from tests.services import free_port, started

pytestmark = pytest.mark.integration

TIMEOUT = 1.0  # header, body and keep-alive timeouts of every server here
CAP = 32  # connections per process
MAX_BODY = 4096
# How late a deadline may fire: the sweep's tick and padding, plus a busy 2-core machine.
SLACK = 1.5


@dataclass
class Server:
    name: str
    port: int
    log: Path
    headers: bytes  # what every request here carries (host, the replica's secret)
    normal: bytes  # a request that answers 200
    post_path: bytes  # a route that reads a body
    max_header_bytes: int


def _limit(settings: Settings) -> None:
    for section in (settings.gateway, settings.serve, settings.control):
        section.http = type(section.http)(
            header_timeout_s=TIMEOUT, body_timeout_s=TIMEOUT, keep_alive_s=TIMEOUT,
            max_connections=CAP)
        section.max_body_bytes = MAX_BODY


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    tmp = tmp_path_factory.mktemp("httplimits")
    settings = load_settings(home=tmp / "home")
    _limit(settings)
    store = Store.open(settings)
    register_tiny(store)
    store.close()
    return settings, tmp


def _get(path: bytes, headers: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\n" + headers + b"\r\n"


@pytest.fixture(scope="module", params=["gateway", "gateway-uvicorn", "replica", "control"])
def server(request: pytest.FixtureRequest, home: tuple[Settings, Path]) -> Iterator[Server]:
    settings, tmp = home
    port, name = free_port(), request.param
    log = tmp / f"{name}.log"
    env = settings.child_env()
    host = b"host: 127.0.0.1\r\n"
    if name.startswith("gateway"):
        args = ["-m", "stratum.gateway", "--port", str(port)]
        args += ["--uvicorn"] if name == "gateway-uvicorn" else []
        ready, headers, post = "/v2/health/live", host, b"/v1/models/tiny:predict"
        limits: HttpLimits = settings.gateway.http
        normal = _get(b"/v2/health/live", headers)
    elif name == "replica":
        args = ["-m", "stratum.serve", "--model", "tiny@1", "--port", str(port)]
        env[REPLICA_SECRET_ENV] = REPLICA_SECRET
        ready, post = "/v2/health/ready", b"/v1/models/tiny:predict"
        limits = settings.serve.http
        headers = host + f"{REPLICA_SECRET_HEADER}: {REPLICA_SECRET}\r\n".encode()
        body = json.dumps(SAMPLE).encode()
        normal = (b"POST " + post + b" HTTP/1.1\r\n" + headers
                  + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
                  + body)
    else:
        args = ["-m", "stratum.control", "--port", str(port)]
        ready, headers, post = "/health", host, b"/deployments"
        limits = settings.control.http
        normal = _get(b"/health", headers)
    with started([sys.executable, *args], ready_url=f"http://127.0.0.1:{port}{ready}",
                  env=env, log=log, timeout=90) as proc:
        yield Server(name, port, log, headers, normal, post, limits.max_header_bytes)
        assert proc.poll() is None, f"{name} died: {log.read_text()[-2000:]}"
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _exchange(srv: Server, raw: bytes, *, wait: float = 10.0) -> tuple[int | None, float]:
    """Send ``raw``, read until the server closes; (first status or None, seconds taken).
    A reset counts as a close: a server may hang up on a client still sending."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=wait) as s:
        start = time.monotonic()
        data = b""
        try:
            s.sendall(raw)
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        elapsed = time.monotonic() - start
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
    return (int(m.group(1)) if m else None), elapsed


def _normal(srv: Server) -> float:
    """One normal request on a fresh connection; its latency. It must answer 200."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        start = time.monotonic()
        s.sendall(srv.normal)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, f"{srv.name} closed the connection instead of answering"
            data += chunk
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 200 "), data[:300]
    return elapsed


def test_oversized_header_is_431_or_closed(server: Server) -> None:
    # Far past the limit, as the 64 MB one: refused early, never buffered whole.
    raw = _get(b"/", server.headers + b"x-big: " + b"a" * (4 << 20) + b"\r\n")
    status, elapsed = _exchange(server, raw)
    assert status in (431, None) and elapsed < 3, (status, elapsed)
    just_over = b"x-big: " + b"a" * (2 * server.max_header_bytes) + b"\r\n"
    assert _exchange(server, _get(b"/", server.headers + just_over))[0] == 431


def test_oversized_url_is_414(server: Server) -> None:
    status, elapsed = _exchange(server, _get(b"/" + b"a" * 70_000, server.headers))
    assert status == 414 and elapsed < 3


def test_too_many_headers_is_431(server: Server) -> None:
    many = b"".join(b"x-h%d: 1\r\n" % i for i in range(200))
    assert _exchange(server, _get(b"/", server.headers + many))[0] == 431


def test_body_over_the_limit_is_413(server: Server) -> None:
    raw = (b"POST " + server.post_path + b" HTTP/1.1\r\n" + server.headers
           + b"content-type: application/json\r\nconnection: close\r\n"
           + b"content-length: %d\r\n\r\n" % (MAX_BODY * 3) + b"x" * (MAX_BODY * 3))
    status, _ = _exchange(server, raw)
    assert status == 413


@pytest.mark.parametrize("part", ["body", "headers"])
def test_a_stalled_request_gets_408_or_closed_within_the_timeout(server: Server,
                                                                  part: str) -> None:
    if part == "body":
        raw = (b"POST " + server.post_path + b" HTTP/1.1\r\n" + server.headers
               + b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"in")
    else:
        raw = b"GET /v2/health/live HTTP/1.1\r\n" + server.headers + b"x-slow: 1\r\n"
    status, elapsed = _exchange(server, raw)
    assert status in (408, None), status
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + SLACK, elapsed


def test_an_idle_connection_is_closed_after_the_idle_timeout(server: Server) -> None:
    status, elapsed = _exchange(server, b"")
    assert status is None and TIMEOUT * 0.9 <= elapsed <= TIMEOUT + SLACK, elapsed
    # and after a request, on keep-alive (uvicorn's timer has whole seconds)
    status, elapsed = _exchange(server, server.normal)
    assert status == 200 and elapsed <= TIMEOUT + SLACK, elapsed


def test_an_idle_flood_past_the_cap_does_not_stop_normal_requests(server: Server) -> None:
    flood: list[socket.socket] = []
    try:
        for _ in range(CAP * 4):
            flood.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        time.sleep(0.1)  # let the server accept them all
        latencies = [_normal(server) for _ in range(5)]
        assert max(latencies) < 1.0, latencies
        # The flood cost the server idle connections only: the cap held.
        closed = 0
        for s in flood:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed >= len(flood) - CAP, (closed, len(flood))
    finally:
        for s in flood:
            s.close()


def test_the_server_still_serves_after_all_of_that(server: Server) -> None:
    assert _normal(server) < 1.0
