"""Hard HTTP limits for every server Stratum runs: URL, header size and count, header and
body read timeouts, keep-alive idle time and a connection cap (``HttpLimits``).

Two servers parse HTTP with httptools: the gateway's own (``stratum.gateway.server``) and
uvicorn's, which runs the replica, the control plane and ``gateway --uvicorn``. Neither
limits anything on its own: uvicorn's httptools protocol has no URL, header or read limit
and times out only keep-alive connections that already answered a request. This module
holds what both need, and ``uvicorn_options`` gives uvicorn a protocol class that enforces
the limits.

Sizes are counters checked in the parser's callbacks, so a request is refused as soon as
it crosses one, before the parser buffers more. Timeouts cost a request nothing: each
connection keeps its parser state and a request count, and one sweep per process a few
times a second (``Watch``) notes how long each has stayed unchanged.
"""

from __future__ import annotations

import asyncio
import json
import math
from http import HTTPStatus
from typing import Any, ClassVar, Protocol

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from stratum.config import HttpLimits
from stratum.errors import (
    BadRequestError,
    HeadersTooLargeError,
    RequestTimeoutError,
    ServingError,
    StratumError,
    UrlTooLongError,
)

# Where a connection's parser is: between requests, in a request's head, in its body.
IDLE, HEAD, BODY = 0, 1, 2


def refusal(error: StratumError, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 response for ``error`` (its status, its JSON) that closes the
    connection: what a server writes before hanging up on a client."""
    body = json.dumps(error.to_dict(), separators=(",", ":")).encode()
    phrase = HTTPStatus(error.http_status).phrase
    return (f"HTTP/1.1 {error.http_status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n").encode() + extra \
        + b"\r\n" + body


class Refusals:
    """The responses for each limit, made once per server."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.bad_request = refusal(BadRequestError(
            "malformed HTTP request", hint="send HTTP/1.1 with a valid request line"))
        self.url = refusal(UrlTooLongError(
            f"the URL is over the {limits.max_url_bytes}-byte limit",
            hint="send inputs in the request body, not in the URL"))
        self.header_bytes = refusal(HeadersTooLargeError(
            f"the headers are over the {limits.max_header_bytes}-byte limit",
            hint="send fewer or smaller headers"))
        self.header_count = refusal(HeadersTooLargeError(
            f"the request has more than {limits.max_headers} headers",
            hint="send fewer headers"))
        self.timeouts = {HEAD: refusal(RequestTimeoutError(
            f"the request's headers did not arrive within {limits.header_timeout_s:g} s")),
            BODY: refusal(RequestTimeoutError(
                f"the request's body did not arrive within {limits.body_timeout_s:g} s"))}
        self.full = refusal(ServingError(
            f"the server holds its limit of {limits.max_connections} connections, each "
            "with a request in flight", hint="retry in a moment"), b"retry-after: 1\r\n")

    def headers(self, header_bytes: int) -> bytes:
        """The 431 for headers over one of the two limits: size or count."""
        return (self.header_bytes if header_bytes > self.limits.max_header_bytes
                else self.header_count)


class Refused(Exception):
    """Raised in a parser callback to stop parsing; the connection holds what to answer."""


class Guarded(Protocol):
    """What ``Watch`` needs of a connection."""

    state: int  # IDLE, HEAD or BODY
    requests: int  # begun on this connection: with state, what tells progress
    seen: tuple[int, int, bool] | None  # (state, requests, answering) at the last sweep
    since: float  # when the sweep first saw ``seen``
    fed: int  # bytes of an unfinished head after its first read
    head_of: int  # the request ``fed`` counts for

    def answering(self) -> bool: ...  # an answer is owed: no timeout runs meanwhile
    # A timeout passed: refuse (408) or close; if it was closed a timeout ago and is still
    # here (a client that reads nothing keeps our last bytes unsent), drop it.
    def expire(self) -> None: ...
    def hang_up(self) -> None: ...  # drop an idle connection now (the cap needs room)


def head_overflows(conn: Guarded, size: int, limits: HttpLimits) -> bool:
    """After a read of ``size`` bytes left ``conn`` inside a request's head: is the head
    past the limits? httptools buffers an unfinished header whole before ``on_header``, so
    this bounds what it holds. The read a head began in is not counted (it may carry the
    end of the request before), so this errs short by one read, never long."""
    if conn.head_of != conn.requests:
        conn.head_of, conn.fed = conn.requests, 0
        return False
    conn.fed += size
    return conn.fed > limits.max_header_bytes + limits.max_url_bytes


class Watch:
    """The connections of one server, their timeouts, and the cap.

    A sweep every ``tick`` seconds notes each connection's (state, requests, answering);
    one that stayed the same, answering nothing, longer than its state's timeout expires.
    A state is seen at most a tick after it began, so a timeout fires at most two ticks
    late and never early; the hot path only sets ``state`` and counts ``requests``.
    """

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.refusals = Refusals(limits)
        self.tick = min(0.5, limits.header_timeout_s / 4, limits.body_timeout_s / 4,
                        limits.keep_alive_s / 4)
        self._timeouts = (limits.keep_alive_s, limits.header_timeout_s, limits.body_timeout_s)
        self.conns: set[Guarded] = set()
        self._timer: asyncio.TimerHandle | None = None

    def admit(self, conn: Guarded) -> bool:
        """Count ``conn`` in; at the cap, first close the longest-idle connections (as
        nginx reuses keep-alive ones). False: every connection has a request in flight."""
        if self._timer is None:
            self._sweep()
        if len(self.conns) >= self.limits.max_connections:
            # A sixteenth at a time, so a flood of new connections does not pay a scan
            # each; the longest idle go first, those not swept yet last.
            idle = sorted((c for c in self.conns if c.state == IDLE and not c.answering()),
                          key=_by_since)
            for c in idle[:max(1, len(self.conns) // 16)]:
                self.conns.discard(c)
                c.hang_up()
            if len(self.conns) >= self.limits.max_connections:
                return False
        self.conns.add(conn)
        return True

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for c in list(self.conns):
            seen = (c.state, c.requests, c.answering())
            if seen != c.seen:
                c.seen, c.since = seen, now
            elif not seen[2] and now - c.since > self._timeouts[c.state]:
                c.expire()
                c.since = now
        self._timer = loop.call_later(self.tick, self._sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _by_since(conn: Guarded) -> float:
    return conn.since


class _LimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``Watch``'s limits: the gateway server's checks,
    each parser callback then calling uvicorn's own. Written against uvicorn's
    ``HttpToolsProtocol`` internals (``parser``, ``cycle``, ``pipeline``, ``url``);
    tests/integration/test_http_limits.py runs it for the replica and the control plane."""

    watch: ClassVar[Watch]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state = IDLE
        self.requests = self.fed = self.head_of = self.header_bytes = self.headers_seen = 0
        self.seen: tuple[int, int, bool] | None = None
        self.since = math.inf
        self.owed: bytes | None = None  # the refusal a callback chose before raising

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.watch.admit(self):
            transport.write(self.watch.refusals.full)
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.watch.conns.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no websockets here (ws="none"): the request is answered as plain HTTP
        except httptools.HttpParserError:
            self._refuse(self.owed or self.watch.refusals.bad_request)
            return
        if self.state == HEAD and head_overflows(self, len(data), self.watch.limits):
            self._refuse(self.watch.refusals.header_bytes)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.state = HEAD
        self.requests += 1
        self.header_bytes = self.headers_seen = 0

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self.watch.limits.max_url_bytes:
            self.owed = self.watch.refusals.url
            raise Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers_seen += 1
        self.header_bytes += len(name) + len(value) + 4
        limits = self.watch.limits
        if self.header_bytes > limits.max_header_bytes or self.headers_seen > limits.max_headers:
            self.owed = self.watch.refusals.headers(self.header_bytes)
            raise Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.state = BODY
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.state = IDLE
        super().on_message_complete()

    def answering(self) -> bool:
        cycle = self.cycle
        if self.pipeline:
            return True
        if cycle is None or cycle.response_complete:
            return False
        # In a body the app already runs (uvicorn starts it at the head): only an answer
        # under way stops the body's clock.
        return self.state != BODY or cycle.response_started

    def _refuse(self, response: bytes) -> None:
        """Answer ``response`` and close, unless an answer is owed first: then close after
        it (a client sees its answers, then a closed connection)."""
        cycle, transport = self.cycle, self.transport
        if transport.is_closing():
            return
        # Queued requests wait on this one (no order left to keep), or this one was
        # answered early (413, 401): hang up.
        if self.pipeline or (self.state == BODY and cycle.response_complete):
            transport.close()
        elif self.answering():
            cycle.keep_alive = False  # uvicorn closes once this answer is out
            transport.pause_reading()
        else:
            transport.write(response)
            transport.close()

    def expire(self) -> None:
        if self.transport.is_closing():
            self.transport.abort()
        elif self.state == IDLE:
            self.transport.close()
        else:
            self._refuse(self.watch.refusals.timeouts[self.state])

    def hang_up(self) -> None:
        self.transport.abort()


def uvicorn_options(limits: HttpLimits) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` that enforce ``limits`` (httptools parser).

    No ``limit_concurrency``: uvicorn counts idle connections against it and answers 503
    to real requests during an idle flood; the cap here closes idle connections instead.
    """
    protocol = type("LimitedHttpToolsProtocol", (_LimitedHttpTools,), {"watch": Watch(limits)})
    return {"http": protocol, "ws": "none",
            # uvicorn's own keep-alive timer (whole seconds) backs up the sweep's.
            "timeout_keep_alive": max(1, math.ceil(limits.keep_alive_s))}
