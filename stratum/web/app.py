"""The dashboard, mounted on the control plane's app at ``/ui`` (``mount`` is the
extension ``python -m stratum.web`` hands ``stratum.control``).

Pages are server-rendered (Jinja2, autoescaped); live parts are short polls of JSON that
carry server-rendered fragments and chart data (``static/app.js``), drawn with uPlot
shipped in ``static/`` (no CDN: the dashboard works offline). Every response carries a
strict Content-Security-Policy (scripts and styles from this origin only, no inline
script), refuses framing, and is not cached. A ``StratumError`` is a page with its status
(a missing object is a 404 page); anything else a 500 page that shows no traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stratum.control.api import ControlParts
from stratum.errors import StratumError
from stratum.web import actions, catalog, deployments, events, learning, overview, training
from stratum.web.session import guarded, login, login_page, logout
from stratum.web.site import PREFIX, STATIC, Site, site_of

log = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
ASGI = Callable[[Any, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                Awaitable[None]]

HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; "
     b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
     b"form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make forms send Origin: null
]


class SecurityHeaders:
    """ASGI middleware: the headers above on every answer; no caching but of static files."""

    def __init__(self, app: ASGI) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(f"{PREFIX}/static/")

        async def with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                extra = [] if static else [(b"cache-control", b"no-store")]
                msg["headers"] = [*msg.get("headers", []), *HEADERS, *extra]
            await send(msg)

        await self.app(scope, receive, with_headers)


async def _stratum_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StratumError)
    return site_of(request).render(request, "error.html", status=exc.http_status,
                                   title="Not found" if exc.http_status == 404 else "Error",
                                   message=exc.message, hint=exc.hint or "")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = "Not found" if exc.status_code == 404 else "Error"
    return site_of(request).render(request, "error.html", status=exc.status_code, title=title,
                                   message=f"no page at {request.url.path}"
                                   if exc.status_code == 404 else str(exc.detail), hint="")


async def _crash(request: Request, exc: Exception) -> Response:
    log.exception("dashboard page %s failed", request.url.path)
    return site_of(request).render(request, "error.html", status=500, title="Error",
                                   message="the page failed; the control plane's log says why",
                                   hint="")


def routes() -> list[Route | Mount]:
    def page(path: str, handler: Callable[[Request], Awaitable[Response]],
             methods: tuple[str, ...] = ("GET",), *, is_page: bool = True) -> Route:
        return Route(path, guarded(handler, page=is_page), methods=list(methods))

    post = ("POST",)
    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        page("/", overview.overview),
        page("/live/overview", overview.overview_live, is_page=False),
        page("/datasets", catalog.datasets),
        page("/datasets/{name}", catalog.dataset),
        page("/models", catalog.models),
        page("/models/{name}", catalog.model),
        page("/models/{name}/alias", actions.move_alias, post),
        page("/runs", training.runs),
        page("/runs/{run_id}", training.run_page),
        page("/live/runs/{run_id}", training.run_live, is_page=False),
        page("/deployments", deployments.deployments),
        page("/deployments/{name}", deployments.deployment),
        page("/live/deployments/{name}", deployments.deployment_live, is_page=False),
        page("/deployments/{name}/rollback", actions.rollback, post),
        page("/deployments/{name}/scale", actions.scale, post),
        page("/deployments/{name}/canary", actions.canary, post),
        page("/learner", learning.learner),
        page("/events", events.events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def mount(parts: ControlParts) -> None:
    """Add the dashboard to the control plane's app: ``/ui/…``, and ``/`` leads there."""
    ui = Starlette(routes=routes(), exception_handlers={
        StratumError: _stratum_error, HTTPException: _http_error, Exception: _crash})
    ui.state.site = Site(parts)
    ui.add_middleware(SecurityHeaders)
    parts.app.mount(PREFIX, ui)

    async def home(_: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/", 307)

    parts.app.add_route("/", home, include_in_schema=False)


__all__ = ["mount", "routes"]
