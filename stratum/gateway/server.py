"""A small HTTP/1.1 server for the gateway: httptools parsing on an asyncio Protocol.

Why not uvicorn, as the replica uses: py-spy on the gateway under 64 concurrent clients
showed a third of its CPU in uvicorn's per-request machinery (an ASGI message dict per
event, a proxy-headers middleware, and two ``send`` syscalls per response, head and body).
Here a request is parsed straight into a ``Call``, the body is buffered under the size
limit, and the response goes out in one write. The gateway stays an ASGI app too
(``Gateway`` is callable), so uvicorn or an in-process test client can still serve it.

Keep-alive, pipelined requests (answered in order) and chunked request bodies are
supported; ``Expect: 100-continue`` is answered. SIGTERM stops accepting, answers what
arrives for a second more with ``connection: close`` (so keep-alive clients move to a
sibling gateway on the same port without a reset), lets requests in flight finish (up to
``grace`` seconds) and closes idle connections.

``gateway.http`` (``stratum.httplimits``) bounds what a client may send: URL, header bytes
and count are counted in the parser callbacks and refused (414, 431) before more is
buffered; header and body read timeouts (408) and the keep-alive idle time are checked by
a per-process sweep of the connections' states; at the connection cap the longest-idle
connections are closed. A request pays a few counters and comparisons, no timer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from collections import deque
from http import HTTPStatus
from urllib.parse import unquote

import httptools

from stratum.errors import PayloadTooLargeError, StratumError
from stratum.gateway.app import Gateway
from stratum.gateway.call import Call
from stratum.httplimits import BODY, HEAD, IDLE, Refused, Watch, head_overflows, refusal
from stratum.security.tls import server_context

log = logging.getLogger(__name__)

_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_ERROR = b'{"error":"InternalError","message":"gateway error"}'
_INTERNAL = refusal(StratumError("gateway error", hint="see the gateway's log"))


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "size", "too_large", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.method = ""
        self.keep_alive = True


class _Connection(asyncio.Protocol):
    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.gateway = server.gateway
        self.limit = server.gateway.cfg.max_body_bytes
        self.watch = watch = server.watch
        self.refusals = watch.refusals
        # The limits, copied here so each check is one attribute load.
        self.max_url = watch.limits.max_url_bytes
        self.max_header_bytes = watch.limits.max_header_bytes
        self.max_headers = watch.limits.max_headers
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: str | None = None
        self.client_port: int | None = None  # for the audit log of /admin/*
        self.current = _Request()
        self.queue: deque[_Request] = deque()
        self.busy = False
        self.closing = False
        # What Watch reads (see Guarded) and the header counters.
        self.state = IDLE
        self.requests = self.fed = self.head_of = self.header_bytes = self.headers_seen = 0
        self.seen: tuple[int, int, bool] | None = None
        self.since = math.inf
        self.owed: bytes | None = None  # a refusal to send once the answers in flight are out

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = transport  # type: ignore[assignment]  # uvloop's is no subclass
        if not self.watch.admit(self):
            t.write(self.refusals.full)  # type: ignore[attr-defined]
            t.close()
            self.closing = True
            return
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else None
        self.client_port = peer[1] if peer else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.watch.conns.discard(self)
        self.closing = True

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(self.refusals.bad_request)
        except httptools.HttpParserError:
            self._refuse(self.owed or self.refusals.bad_request)
        else:
            if self.state == HEAD and head_overflows(self, len(data), self.watch.limits):
                self._refuse(self.refusals.header_bytes)

    def _refuse(self, response: bytes) -> None:
        """Answer ``response`` and close; after the answers in flight, if there are any."""
        if self.busy:  # _serve sends it once the answers it owes are out
            self.owed = response
            if self.transport is not None:
                self.transport.pause_reading()
            return
        if self.transport is not None and not self.closing:
            self.transport.write(response)
            self.transport.close()
        self.closing = True

    # -- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.current = _Request()
        self.state = HEAD
        self.requests += 1
        self.header_bytes = self.headers_seen = 0

    def on_url(self, url: bytes) -> None:
        req = self.current
        req.url += url
        if len(req.url) > self.max_url:
            self.owed = self.refusals.url
            raise Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers_seen += 1
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.max_header_bytes or self.headers_seen > self.max_headers:
            self.owed = self.refusals.headers(self.header_bytes)
            raise Refused
        self.current.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.state = BODY
        req = self.current
        req.method = self.parser.get_method().decode("ascii", "replace")
        req.keep_alive = self.parser.should_keep_alive()
        if req.headers.get(b"expect", b"").lower() == b"100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        req = self.current
        req.size += len(body)
        if req.size > self.limit:
            req.too_large, req.body = True, []  # answer 413, then close: the rest is dropped
        else:
            req.body.append(body)

    def on_message_complete(self) -> None:
        self.state = IDLE  # and busy: no timeout runs while the answer is owed
        self.queue.append(self.current)
        if len(self.queue) > 16 and self.transport is not None:
            self.transport.pause_reading()  # a client pipelining far ahead waits
        if not self.busy:
            self.busy = True
            task = asyncio.get_running_loop().create_task(self._serve())
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)

    # -- answering ----------------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while self.queue and not self.closing:
                req = self.queue.popleft()
                await self._answer(req)
                if self.transport is not None and len(self.queue) <= 16 and not self.owed:
                    self.transport.resume_reading()
        except Exception:  # a bug must not leave the connection hanging
            log.exception("gateway connection failed")
            self.owed = self.owed or _INTERNAL
        finally:
            self.busy = False
            if self.owed is not None:
                self._refuse(self.owed)

    async def _answer(self, req: _Request) -> None:
        try:
            parsed = httptools.parse_url(req.url)
        except httptools.HttpParserInvalidURLError:  # one llhttp let through
            if self.transport is not None:
                self.transport.write(self.refusals.bad_request)
                self.transport.close()
            self.closing = True
            return
        raw_path = parsed.path.decode("latin-1")
        path = unquote(raw_path) if "%" in raw_path else raw_path

        async def read_body() -> bytes:
            if req.too_large:
                raise PayloadTooLargeError(f"the body is over the {self.limit}-byte limit",
                                           hint="send fewer samples per request")
            return req.body[0] if len(req.body) == 1 else b"".join(req.body)

        call = Call(req.method, path, req.url.decode("latin-1"), req.headers, self.client,
                    read_body, self.client_port)
        try:
            status, headers, body = await self.gateway.handle(call)
        except Exception:  # a bug must not kill the connection silently
            log.exception("gateway failed on %s %s", req.method, path)
            status, headers, body = 500, [(b"content-type", b"application/json")], _ERROR
        keep = req.keep_alive and not req.too_large and not self.server.stopping
        head = [_STATUS.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()]
        for k, v in headers:
            head.append(k + b": " + v + b"\r\n")
        head.append(b"content-length: %d\r\n" % len(body))
        if not keep:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        head.append(body)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(b"".join(head))
        if not keep:
            transport.close()
            self.closing = True

    # -- what Watch asks ---------------------------------------------------------------------
    def answering(self) -> bool:
        return self.busy

    def expire(self) -> None:
        if self.closing:
            self.hang_up()
        elif self.state == IDLE:
            if self.transport is not None:
                self.transport.close()
            self.closing = True
        else:
            self._refuse(self.refusals.timeouts[self.state])

    def hang_up(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closing = True

    def close_if_idle(self) -> None:
        if not self.busy and self.transport is not None:
            self.transport.close()


class GatewayServer:
    """Serve ``gateway`` on ``host:port`` until SIGTERM/SIGINT."""

    def __init__(self, gateway: Gateway, host: str, port: int, grace: float = 30.0, *,
                 reuse_port: bool = False, admin_port: int | None = None) -> None:
        """``reuse_port``: share ``port`` with the deployment's other gateways (the kernel
        spreads connections among them); ``admin_port``: a loopback port of this process
        alone, where the supervisor's probes and pushes reach it and not a sibling."""
        self.gateway = gateway
        self.host, self.port, self.grace = host, port, grace
        self.reuse_port, self.admin_port = reuse_port, admin_port
        self.drain = 1.0  # seconds idle keep-alive connections get to see "connection: close"
        self.watch = Watch(gateway.cfg.http)
        self.tls = server_context(gateway.cfg.tls, where="gateway")  # ConfigError: bad files
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tls = self.tls
        # The handshake runs before a connection reaches ``Watch``: bound it by the same
        # clock as a request's head, so a client that never finishes one cannot hold a
        # socket for asyncio's default minute.
        handshake = self.gateway.cfg.http.header_timeout_s if tls is not None else None
        servers = [await loop.create_server(
            lambda: _Connection(self), self.host, self.port, backlog=4096, reuse_address=True,
            reuse_port=self.reuse_port, ssl=tls, ssl_handshake_timeout=handshake)]
        if self.admin_port is not None:
            servers.append(await loop.create_server(
                lambda: _Connection(self), "127.0.0.1", self.admin_port, backlog=128,
                reuse_address=True, ssl=tls, ssl_handshake_timeout=handshake))
        self.gateway.start_background()
        log.info("gateway listening on %s://%s:%d", self.gateway.cfg.tls.scheme, self.host,
                 self.port)
        try:
            await stop.wait()
        finally:
            self.stopping = True
            for server in servers:
                server.close()
            self.watch.stop()
            # Drain before closing idle connections: a client that sends on a connection we
            # close at that instant sees a reset. Each request now gets its answer with
            # "connection: close" (``stopping``), so busy keep-alive clients move to a
            # sibling gateway within a request; only the truly idle are closed after.
            drain_until = loop.time() + min(self.drain, self.grace)
            while loop.time() < drain_until and any(
                    not c.closing for c in self.watch.conns):  # type: ignore[attr-defined]
                await asyncio.sleep(0.02)
            for conn in list(self.watch.conns):
                conn.close_if_idle()  # type: ignore[attr-defined]
            deadline = loop.time() + self.grace
            while self.tasks and loop.time() < deadline:
                await asyncio.sleep(0.05)
            for conn in list(self.watch.conns):
                conn.hang_up()
            await self.gateway.stop_background()
