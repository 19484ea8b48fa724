"""The gateway's built-in HTTP/1.1 server as a real process, spoken to over raw sockets:
keep-alive and pipelining, chunked bodies, 100-continue, malformed HTTP, size limit, and a
routing table installed over HTTP."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import httpx
import pytest

from stratum.config import load_settings
from tests.integration.gateway_fixtures import ADMIN, GATEWAY_TOKEN, gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gwserver")
    settings = load_settings(home=tmp / "home")
    settings.gateway.max_body_bytes = 4096
    with gateway(settings, [], tmp / "gw.log") as (url, _):
        yield url


def _exchange(url: str, raw: bytes, expect: int) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(raw)
        data = b""
        while data.count(b"HTTP/1.1 ") < expect or not data.endswith((b"}", b"\n")):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_pipelined_requests_are_answered_in_order(gw: str) -> None:
    req = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n"
    ready = b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n"
    data = _exchange(gw, req + ready + req, expect=3)
    statuses = re.findall(rb"HTTP/1.1 (\d{3})", data)
    assert statuses == [b"200", b"503", b"200"], data  # no replica: not ready


def test_malformed_http_is_a_400_and_a_closed_connection(gw: str) -> None:
    data = _exchange(gw, b"NOT HTTP AT ALL\r\n\r\n", expect=1)
    assert data.startswith(b"HTTP/1.1 400") and b"connection: close" in data


def test_chunked_body_and_expect_continue(gw: str) -> None:
    body = b'{"deployments": {}}'
    raw = (b"PUT /admin/routes HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
           b"x-stratum-admin-token: " + GATEWAY_TOKEN.encode() + b"\r\n"
           b"expect: 100-continue\r\ncontent-type: application/json\r\n\r\n"
           + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    data = _exchange(gw, raw, expect=2)
    assert data.startswith(b"HTTP/1.1 100 Continue") and b"HTTP/1.1 200 OK" in data


def test_size_limit_and_unknown_model(gw: str) -> None:
    r = httpx.post(f"{gw}/v1/models/m:predict", content=b"x" * 10_000)
    assert r.status_code == 413 and "limit" in r.json()["message"]
    r = httpx.post(f"{gw}/v1/models/m:predict", json={"instances": [[1]]})
    assert r.status_code == 404 and r.headers["x-request-id"]
    routes = {"deployments": {"m": {"groups": [
        {"version": 1, "replicas": ["http://127.0.0.1:1"]}]}}}
    assert httpx.put(f"{gw}/admin/routes", json=routes).status_code == 401
    r = httpx.put(f"{gw}/admin/routes", json=routes, headers=ADMIN)
    assert r.status_code == 200
    r = httpx.post(f"{gw}/v1/models/m:predict", json={"instances": [[1]]})
    assert r.status_code == 503 and "no replica could answer" in r.json()["message"]
    assert httpx.get(f"{gw}/admin/info").status_code == 401
    info = httpx.get(f"{gw}/admin/info", headers=ADMIN).json()
    assert info["role"] == "gateway" and info["replicas"] == 1 and info["healthy"] == 0
