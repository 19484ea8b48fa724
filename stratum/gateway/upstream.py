"""One replica as the gateway sees it: a pool of keep-alive HTTP/1.1 connections plus the
counters the balancer and the health checker read.

The client is a few lines over asyncio streams rather than httpx: the gateway forwards
bytes it never parses, and on a 2-core machine httpx's per-request machinery (request
models, header normalisation, transports) costs several times the hop itself.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from stratum.errors import ConfigError, UpstreamError
from stratum.security.tokens import REPLICA_SECRET_HEADER

_HOP = frozenset((b"connection", b"keep-alive", b"transfer-encoding", b"content-length",
                  b"date", b"server"))
_MAX_IDLE = 256
# The deployment secret a replica checks on every route but health (serve.app); the
# supervisor hands it to both sides, and the gateway never forwards a client's own.
_SECRET_HEADER = REPLICA_SECRET_HEADER.encode()


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]  # end-to-end headers only, names lower-case
    body: bytes


@dataclass(eq=False)
class Upstream:
    """A replica: URL, pooled connections, outstanding requests and health state.
    ``tls``: what an ``https://`` replica is verified with and shown (``client_tls``)."""

    url: str
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    host: str = field(init=False)
    port: int = field(init=False)
    outstanding: int = 0
    healthy: bool = True
    failures: int = 0  # consecutive failed requests (passive ejection counts these)
    requests: int = 0
    errors: int = 0
    # Request-seconds in flight to it so far: its growth over a time span divided by the
    # span is the mean number in flight then (Little's law), what the autoscaler reads;
    # instant ``outstanding`` samples alias with the waves a closed-loop load makes.
    inflight_s: float = 0.0
    _changed: float = field(default_factory=time.monotonic, repr=False)
    _idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(
        default_factory=list, repr=False)
    _fixed: bytes = field(init=False, repr=False)  # header lines every request carries

    def __post_init__(self) -> None:
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError:  # a port past 65535 or not a number, a broken [IPv6]: a 400
            port = None
        if port is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"replica URL {self.url!r} must look like http://HOST:PORT "
                              "or https://HOST:PORT")
        if parts.scheme == "https" and self.tls is None:
            raise ConfigError(f"replica URL {self.url!r} is https but this gateway has no "
                              "TLS client context")
        self.url = f"{parts.scheme}://{parts.hostname}:{port}"
        self.host, self.port = parts.hostname, port
        if parts.scheme == "http":
            self.tls = None
        self.set_secret(None)

    def begin(self) -> None:
        """A request goes to this replica (it counts as outstanding until ``end``)."""
        now = time.monotonic()
        self.inflight_s += self.outstanding * (now - self._changed)
        self._changed = now
        self.outstanding += 1

    def end(self) -> None:
        now = time.monotonic()
        self.inflight_s += self.outstanding * (now - self._changed)
        self._changed = now
        self.outstanding -= 1

    def inflight_so_far(self) -> float:
        """``inflight_s`` up to now, the requests still outstanding included."""
        return self.inflight_s + self.outstanding * (time.monotonic() - self._changed)

    def set_secret(self, secret: str | None) -> None:
        """Send ``secret`` to this replica from now on (None: send none)."""
        self._fixed = f"host: {self.host}:{self.port}".encode()
        if secret:
            self._fixed += b"\r\n" + _SECRET_HEADER + b": " + secret.encode("latin-1")

    async def request(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes,
        timeout: float,
    ) -> UpstreamResponse:
        """Send one request; raise UpstreamError on any connection-level failure.

        A pooled connection the replica closed while idle shows up as an EOF before the
        first response byte; that one case is retried once on a fresh connection, since
        the replica never saw the request.
        """
        head = _encode_head(method, target, self._fixed, headers, len(body))
        try:
            async with asyncio.timeout(timeout):
                while self._idle:
                    conn = self._idle.pop()
                    try:
                        return await self._exchange(conn, head, body)
                    except _StaleConnection:
                        continue
                conn = await (asyncio.open_connection(self.host, self.port) if self.tls is None
                              else asyncio.open_connection(self.host, self.port, ssl=self.tls))
                try:
                    return await self._exchange(conn, head, body)
                except _StaleConnection as exc:
                    raise UpstreamError(f"{self.url} closed the connection") from exc
        except TimeoutError as exc:
            raise UpstreamError(f"{self.url} did not answer within {timeout}s") from exc
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as exc:  # ssl.SSLError is an OSError: a refused handshake
            raise UpstreamError(f"{self.url}: {type(exc).__name__}: {exc}") from exc

    async def _exchange(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], head: bytes, body: bytes,
    ) -> UpstreamResponse:
        reader, writer = conn
        ok = False
        try:
            writer.write(head + body if len(body) < 65_536 else head)
            if len(body) >= 65_536:
                writer.write(body)
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _StaleConnection from exc
                raise
            except ConnectionResetError as exc:
                raise _StaleConnection from exc
            status, headers, length, chunked, close = _parse_head(raw)
            if chunked:
                payload = await _read_chunked(reader)
            elif length is not None:
                payload = await reader.readexactly(length) if length else b""
            else:  # no length: the body runs to EOF
                payload, close = await reader.read(), True
            ok = not close
            return UpstreamResponse(status, headers, payload)
        finally:
            if ok and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
            else:
                writer.close()

    def close(self) -> None:
        """Close every idle connection (the replica left the routing table)."""
        while self._idle:
            self._idle.pop()[1].close()


class _StaleConnection(Exception):
    pass


def _encode_head(method: str, target: str, fixed: bytes, headers: list[tuple[bytes, bytes]],
                 length: int) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), fixed]
    for k, v in headers:
        lines.append(k + b": " + v)
    lines.append(b"content-length: " + str(length).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _parse_head(raw: bytes) -> tuple[int, list[tuple[bytes, bytes]], int | None, bool, bool]:
    lines = raw[:-4].split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1.x response: {lines[0][:60]!r}")
    status = int(status_line[1])
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name in _HOP:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = value.lower() == b"close"
            continue
        headers.append((name, value))
    return status, headers, length, chunked, close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # trailers are not used by replicas
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
