"""Who may look and act. A browser session is an admin-scoped API key (the home's
``admin.token``, or a key from ``stratum keys create NAME --scope admin``) that the login
form puts in an HttpOnly, SameSite=Strict cookie scoped to the dashboard's path. Every
page checks it as the admin API checks its bearer header (the same ``KeyChecker`` and
cache): the API guards reads too, so the dashboard shows nothing without it. Every POST
also carries the session's CSRF token and, when the browser names its ``Origin``, must
come from this one. Logins, refused ones included, go to the audit log.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from stratum.control.audit import peer
from stratum.errors import AuthError, BadRequestError, PermissionDeniedError, StratumError
from stratum.web.site import PREFIX, csrf_token, site_of

log = logging.getLogger(__name__)

COOKIE = "stratum_session"
SESSION_S = 12 * 3600
MAX_FORM_BYTES = 64 * 1024
MAX_FIELDS = 50

Handler = Callable[[Request], Awaitable[Response]]


async def read_form(request: Request) -> dict[str, str]:
    """The url-encoded form of a POST, bounded (forms here are a few fields)."""
    if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"):
        raise BadRequestError("the dashboard takes url-encoded forms only")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadRequestError(f"form larger than {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                          max_num_fields=MAX_FIELDS, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequestError(f"unreadable form: {exc}") from exc
    return dict(pairs)


def same_origin(request: Request) -> bool:
    """False when the browser says the form came from another origin (or an opaque one)."""
    origin = request.headers.get("origin")
    if origin is None:  # not sent by every client; the CSRF token still has to match
        return True
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of the dashboard, never another site."""
    if target and target.startswith(PREFIX + "/") and "//" not in target \
            and "\\" not in target and "\n" not in target and "\r" not in target:
        return target
    return PREFIX + "/"


def guarded(handler: Handler, *, page: bool = True) -> Handler:
    """``handler`` behind the admin session: a page without one redirects to the login
    form, anything else answers 401; a POST is checked for its origin and CSRF token and
    finds its form in ``request.state.form``."""

    async def wrapped(request: Request) -> Response:
        site = site_of(request)
        key = request.cookies.get(COOKIE)
        try:
            await site.parts.keys.authorize(key, "admin")
        except PermissionDeniedError:
            raise
        except AuthError:
            if page and request.method == "GET":
                return RedirectResponse(f"{PREFIX}/login?next={quote(request.url.path)}", 303)
            raise
        assert key is not None  # authorize refused a missing key
        request.state.token = key
        request.state.actor = site.parts.keys.actor(key)
        if request.method == "POST":
            form = await read_form(request)
            if not same_origin(request) or not hmac.compare_digest(
                    form.get("csrf", ""), csrf_token(key)):
                raise PermissionDeniedError("this form's CSRF token is missing or wrong, or it "
                                            "came from another site",
                                            hint="reload the dashboard page and try again")
            request.state.form = form
        try:
            return await handler(request)
        except StratumError:
            raise  # a page with its status (app.py)
        except Exception:  # a bug: a page that says so, the traceback only in the log
            log.exception("dashboard page %s failed", request.url.path)
            return site.render(request, "error.html", status=500, title="Error",
                               message="this page failed; the control plane's log says why",
                               hint="")

    return wrapped


async def login_page(request: Request) -> Response:
    return site_of(request).render(request, "login.html",
                                   next=safe_next(request.query_params.get("next")), error="")


async def login(request: Request) -> Response:
    site = site_of(request)
    form = await read_form(request)
    key = form.get("token", "").strip()
    target = safe_next(form.get("next"))
    status = 200
    try:
        if not same_origin(request):
            raise PermissionDeniedError("the login form came from another site")
        await site.parts.keys.authorize(key, "admin")
    except AuthError as exc:
        status = exc.http_status
        return site.render(request, "login.html", status=status, next=target,
                           error=exc.message)
    finally:
        await site.auditor.record(site.parts.keys.actor(key), peer(request.scope),
                                  "dashboard.login", "", status)
    response = RedirectResponse(target, 303)
    response.set_cookie(COOKIE, key, max_age=SESSION_S, path=PREFIX, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


async def _logout(request: Request) -> Response:
    response = RedirectResponse(f"{PREFIX}/login", 303)
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


logout = guarded(_logout)

__all__ = ["COOKIE", "guarded", "login", "login_page", "logout", "read_form", "safe_next"]
