"""The audit trail of the admin API: every write through it (deploy, undeploy, rollback,
scale) is recorded with who, from where, the status it ended with and what changed —
refused (401/403) and failed attempts included.

``AuditTrail`` wraps the FastAPI app. The admin dependency tells it who called
(``audit_note(request).actor``), a route what it changed (``.target``, ``.detail``); the
record is written when the answer starts, so it exists before the caller sees the answer.
Reads (GET) pass through untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from stratum.store.audit import Auditor

Message = MutableMapping[str, Any]
ASGI = Callable[[Any, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                Awaitable[None]]

_KEY = "stratum.audit"
# The writes of the admin API, by method and route template.
ACTIONS = {
    ("POST", "/deployments"): "deploy",
    ("DELETE", "/deployments/{name}"): "undeploy",
    ("POST", "/deployments/{name}/rollback"): "rollback",
    ("POST", "/deployments/{name}/scale"): "scale",
}
_READS = frozenset(("GET", "HEAD", "OPTIONS"))


@dataclass
class Note:
    """What the handling of one request learnt for its audit record."""

    actor: str = "anonymous"
    target: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def audit_note(request: Request) -> Note:
    """The note of this request (a throwaway one for reads, which are not recorded)."""
    note = request.scope.get(_KEY)
    return note if isinstance(note, Note) else Note()


def peer(scope: MutableMapping[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


def spec_change(before: dict[str, Any] | None, after: dict[str, Any] | None,
                ) -> dict[str, Any]:
    """The fields of a deployment's wanted spec that differ, before and after: a created
    deployment has ``before`` None, a deleted one ``after`` None.

    >>> spec_change({"version": 1, "replicas": 2}, {"version": 1, "replicas": 4})
    {'before': {'replicas': 2}, 'after': {'replicas': 4}}
    """
    if before is None or after is None:
        return {"before": before, "after": after}
    keys = [k for k in {**before, **after} if before.get(k) != after.get(k)]
    return {"before": {k: before.get(k) for k in keys}, "after": {k: after.get(k) for k in keys}}


class AuditTrail:
    """ASGI middleware: records each admin write when its answer starts."""

    def __init__(self, app: ASGI, auditor: Auditor) -> None:
        self.app = app
        self.auditor = auditor

    async def __call__(self, scope: Any, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["method"] in _READS:
            await self.app(scope, receive, send)
            return
        note = scope[_KEY] = Note()
        done = False

        async def record(status: int) -> None:
            nonlocal done
            # Starlette's router has put the matched route into the scope by now.
            action = ACTIONS.get((scope["method"], getattr(scope.get("route"), "path", "")))
            if action is not None and not done:
                done = True
                target = note.target or (scope.get("path_params") or {}).get("name", "")
                await self.auditor.record(note.actor, peer(scope), action, str(target), status,
                                          note.detail)

        async def audited(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                await record(int(msg["status"]))
            await send(msg)

        try:
            await self.app(scope, receive, audited)
        except Exception:
            await record(500)  # answered by the server's error handler, outside this one
            raise


__all__ = ["ACTIONS", "AuditTrail", "Note", "audit_note", "peer", "spec_change"]
