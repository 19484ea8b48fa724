"""The ASGI layer both servers (replica and gateway) speak: a request/response pair, a path
router and bounded body reading (also as a guard in front of another app, ``limit_body``).

The replica speaks raw ASGI instead of going through a framework because, on a small
machine, the per-request Python is the cost that matters: no middleware stack, no
per-request validation models, one dict lookup to route a path already seen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stratum.errors import MethodNotAllowedError, PayloadTooLargeError

JSON = b"application/json"


@dataclass(slots=True)
class Request:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes
    request_id: str
    client: tuple[str, int] | None = None  # the peer as the server saw it (ASGI's)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    version: int | None = None  # the model version that answered; the current one if None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(slots=True)
class Route:
    method: str
    template: str  # e.g. "/v2/models/{name}/infer"; also the metrics label
    handler: Handler
    pattern: re.Pattern[str]
    reads_body: bool


class Router:
    """Templates with ``{param}`` segments; lookups of a path seen before cost one dict get."""

    _CACHE_MAX = 4096

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self._cache: dict[str, tuple[list[Route], dict[str, str]]] = {}

    def add(self, method: str, template: str, handler: Handler) -> None:
        regex = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/:]+)", re.escape(template))
        self.routes.append(Route(method, template, handler, re.compile(f"^{regex}$"),
                                 method in ("POST", "PUT")))
        self._cache.clear()

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route for ``method path``; None if no template matches the path at all;
        MethodNotAllowedError if one matches with another method."""
        hit = self._cache.get(path)
        if hit is None:
            found: list[Route] = []
            params: dict[str, str] = {}
            for r in self.routes:
                m = r.pattern.match(path)
                if m:
                    found.append(r)
                    params = m.groupdict()
            if not found:
                return None
            if len(self._cache) >= self._CACHE_MAX:
                self._cache.clear()
            hit = self._cache[path] = (found, params)
        for r in hit[0]:
            if r.method == method:
                return r, hit[1]
        raise MethodNotAllowedError(
            f"{method} is not allowed on {path}; use {', '.join(r.method for r in hit[0])}"
        )


async def read_body(receive: Callable[[], Awaitable[Mapping[str, Any]]], limit: int,
                    declared: str | None) -> bytes:
    """The whole request body, refusing (413) anything over ``limit`` bytes — early when
    Content-Length says so, otherwise as soon as the chunks pass the limit."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the body has {declared} bytes; the limit is {limit}",
                                   hint="send fewer samples per request")
    msg = await receive()
    body: bytes = msg.get("body", b"")
    if not msg.get("more_body"):
        if len(body) > limit:
            raise PayloadTooLargeError(f"the body is over the {limit}-byte limit")
        return body
    chunks, size = [body], len(body)
    while msg.get("more_body"):
        msg = await receive()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"the body is over the {limit}-byte limit",
                                       hint="send fewer samples per request")
        chunks.append(chunk)
    return b"".join(chunks)


ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def limit_body(app: ASGIApp, limit: int) -> ASGIApp:
    """``app`` behind a body limit: each request body is read (at most ``limit`` bytes)
    before ``app`` runs, and one over it gets a 413 without reaching ``app``. For apps
    that do not bound their own reads (the control plane's FastAPI); their bodies are
    small, so buffering them first costs nothing."""

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        declared = next((v.decode("latin-1") for k, v in scope["headers"]
                         if k == b"content-length"), None)
        gone = False

        async def tracked() -> Mapping[str, Any]:
            nonlocal gone
            msg = await receive()
            gone = gone or msg["type"] == "http.disconnect"
            return msg

        try:
            body = await read_body(tracked, limit, declared)
        except PayloadTooLargeError as exc:
            # Kept alive: the server reads the rest of the body and drops it, so a client
            # still sending reads this answer instead of a reset connection.
            err = PayloadTooLargeError(exc.message)  # read_body's hint is the replica's
            await send({"type": "http.response.start", "status": err.http_status,
                        "headers": [(b"content-type", JSON)]})
            await send({"type": "http.response.body",
                        "body": json.dumps(err.to_dict(), separators=(",", ":")).encode()})
            return
        if gone:  # the client left mid-body: nothing to answer
            return
        given = False

        async def replay() -> Mapping[str, Any]:
            nonlocal given
            if given:
                return await receive()  # after the body: wait for the disconnect
            given = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return guarded
