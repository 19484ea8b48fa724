"""One request as the gateway sees it, whichever server received it, and what the gateway
reads off it: the route label for metrics, the model it names, its bounded body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from stratum.errors import PayloadTooLargeError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class Call:
    """One request, whichever server received it (uvicorn's ASGI or ``server.py``)."""

    method: str
    path: str  # percent-decoded, for routing
    target: str  # path and query exactly as sent, for forwarding
    headers: dict[bytes, bytes]  # names lower-case
    client: str | None  # the peer's address: what rate limits count per client
    read_body: Callable[[], Awaitable[bytes]]
    port: int | None = None  # the peer's port, for the audit log's source


def route_label(path: str) -> str:
    if path.endswith("/infer"):
        return "infer"
    if path.endswith(":predict"):
        return "predict"
    if path.endswith("/feedback"):
        return "feedback"
    return "metadata" if path.startswith(("/v2/models/", "/v1/models/")) else "other"


def model_of(path: str) -> str | None:
    if path.startswith(("/v2/models/", "/v1/models/")):
        return path[11:].split("/", 1)[0].split(":", 1)[0] or None
    return None


async def read_call_body(call: Call, limit: int) -> bytes:
    """The body, refused with a 413 up front when Content-Length already says it is over."""
    declared = call.headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"the body has {int(declared)} bytes; the limit is {limit}",
            hint="send fewer samples per request")
    return await call.read_body()
