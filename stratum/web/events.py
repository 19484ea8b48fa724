"""The Events page: the store's event trail (registrations, alias moves, deployments,
learner decisions, drift windows, alerts) and the audit log of admin actions, each
filterable, newest first."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from stratum.errors import BadRequestError
from stratum.store.audit import COMPONENTS, AuditLog
from stratum.web.site import site_of

MAX_LIMIT = 500
MAX_FILTER = 200


def _param(request: Request, key: str) -> str | None:
    value = request.query_params.get(key, "").strip()
    if len(value) > MAX_FILTER:
        raise BadRequestError(f"the {key} filter is longer than {MAX_FILTER} characters")
    return value or None


def _limit(request: Request) -> int:
    try:
        limit = int(request.query_params.get("limit", "100"))
    except ValueError:
        raise BadRequestError("limit must be a whole number") from None
    return max(1, min(limit, MAX_LIMIT))


async def events(request: Request) -> Response:
    site = site_of(request)
    source = "audit" if request.query_params.get("source") == "audit" else "events"
    limit = _limit(request)
    filters = {k: _param(request, k) for k in ("kind", "subject", "actor", "action",
                                                "component")}
    if source == "events":
        rows = await site.run(lambda: site.meta.events(filters["subject"], filters["kind"],
                                                       limit))
        return site.render(request, "events.html", source=source, rows=rows, filters=filters,
                           limit=limit, components=COMPONENTS)
    if filters["component"] and filters["component"] not in COMPONENTS:
        raise BadRequestError(f"component must be one of {', '.join(COMPONENTS)}")
    audit = AuditLog(site.meta)
    entries = await site.run(lambda: audit.entries(
        actor=filters["actor"], action=filters["action"], component=filters["component"],
        limit=limit))
    return site.render(request, "events.html", source=source, rows=entries, filters=filters,
                       limit=limit, components=COMPONENTS)


__all__ = ["events"]
