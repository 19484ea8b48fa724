"""The control plane's interactive API docs: Swagger UI at ``GET /docs``, served whole
from this package (FastAPI's recipe "Self-hosting JavaScript and CSS for docs").

FastAPI's own ``/docs`` and ``/redoc`` load their scripts, styles and favicon from
public CDNs: a supply-chain risk, and a blank page on a cluster with no way out. Here the
page's script, style and icon are ``static/`` (Swagger UI, vendored from npm, version and
checksums in ``static/README.md``), at ``/docs/static/``; the page names no other host
and its Content-Security-Policy lets the browser fetch from this origin only. ReDoc is
not served (it would be a second vendored bundle for the same document).

What needs a key is unchanged: ``/docs``, its assets and ``/docs/oauth2-redirect`` are as
public as ``/openapi.json`` (they describe routes, hold no state); every call made from
the page's "Try it out" goes to the admin API, which still wants the admin key
("Authorize").
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

SWAGGER_UI = "5.35.0"  # the version vendored in static/ (static/README.md)
STATIC = Path(__file__).resolve().parent / "static"
DOCS = "/docs"
ASSETS = "/docs/static"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
JS, CSS, ICON = "swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"

Message = MutableMapping[str, Any]
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
# Inline style attributes stay allowed: Swagger UI's React views set some.
_POLICY = ("default-src 'self'; script-src 'self' {scripts}; style-src 'self' "
           "'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
           "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def add_docs(app: FastAPI) -> None:
    """Serve ``/docs`` (Swagger UI over ``app.openapi_url``), its assets and its OAuth2
    redirect page on ``app``, built with ``docs_url=None, redoc_url=None,
    swagger_ui_oauth2_redirect_url=None``. Plain routes, not API routes: they stay out of
    the document and out of the admin guard, as FastAPI's own were."""

    async def docs(request: Request) -> Response:
        # Behind a proxy that strips a prefix, every URL of the page keeps it.
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/{JS}", swagger_css_url=f"{root}{ASSETS}/{CSS}",
            swagger_favicon_url=f"{root}{ASSETS}/{ICON}",
            oauth2_redirect_url=root + OAUTH2_REDIRECT,
            # The badge would send the document's URL to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None})
        return _secured(page)

    async def oauth2_redirect(_: Request) -> Response:
        return _secured(get_swagger_ui_oauth2_redirect_html())

    app.add_route(DOCS, docs, include_in_schema=False)
    app.add_route(OAUTH2_REDIRECT, oauth2_redirect, include_in_schema=False)
    app.mount(ASSETS, _NoSniff(StaticFiles(directory=STATIC)), name="docs-static")


def _secured(page: HTMLResponse) -> HTMLResponse:
    """``page`` with a policy that allows its own inline scripts (by hash) and nothing from
    another origin, and no framing (the page can call the admin API)."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in _INLINE_SCRIPT.findall(bytes(page.body).decode()))
    page.headers["content-security-policy"] = _POLICY.format(scripts=hashes)
    page.headers["x-frame-options"] = "DENY"
    page.headers["x-content-type-options"] = "nosniff"
    page.headers["referrer-policy"] = "same-origin"
    return page


class _NoSniff:
    """ASGI wrapper: the browser takes each asset as the type it is served with."""

    def __init__(self, app: StaticFiles) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        async def with_header(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                msg["headers"] = [*msg.get("headers", []), (b"x-content-type-options",
                                                              b"nosniff")]
            await send(msg)

        await self.app(scope, receive, with_header)


__all__ = ["ASSETS", "DOCS", "OAUTH2_REDIRECT", "STATIC", "SWAGGER_UI", "add_docs"]
