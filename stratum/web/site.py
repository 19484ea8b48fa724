"""What every page handler shares: the control plane's parts, the templates, the live
sampler, and how a page is rendered.

Templates are Jinja2 with autoescaping on for every file, so any name a user chose (a
dataset, a model, a column called ``<script>``) is text wherever it lands; data for charts
goes through ``tojson``, which escapes ``<``, ``>`` and ``&`` inside ``<script>`` blocks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from stratum.config import Settings
from stratum.control.api import ControlParts
from stratum.control.supervisor import Supervisor
from stratum.store.audit import AuditLog, Auditor
from stratum.store.metadata import MetadataStore
from stratum.web.live import Sampler

PREFIX = "/ui"
TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"
NAV = (("", "Overview"), ("/datasets", "Datasets"), ("/models", "Models"),
       ("/runs", "Training runs"), ("/deployments", "Deployments"), ("/learner", "Learner"),
       ("/events", "Events"))

T = TypeVar("T")


def _ago(value: datetime | str | float | None) -> str:
    """``3 s ago``, ``5 min ago``… from a datetime, an ISO string or epoch seconds."""
    if value is None or value == "" or isinstance(value, jinja2.Undefined):
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value
        secs = (datetime.now(UTC) - aware).total_seconds()
    else:
        secs = datetime.now(UTC).timestamp() - float(value)
    secs = max(0.0, secs)
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if secs >= size:
            return f"{secs / size:.0f} {unit} ago"
    return f"{secs:.0f} s ago"


def _num(value: Any, digits: int = 3) -> str:
    """A number for a table cell: ``-`` when missing or not finite, else ``digits``
    significant figures (integers whole, with thousands separators)."""
    if value is None or isinstance(value, bool | jinja2.Undefined):
        return str(value) if isinstance(value, bool) else "-"
    if isinstance(value, int):
        return f"{value:,}"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(f):
        return "-"
    return f"{f:,.0f}" if abs(f) >= 10 ** digits else f"{f:.{digits}g}"


def _scaled(value: Any, scale: float, fmt: str) -> str:
    """``value * scale`` in ``fmt``; ``-`` for anything that is not a finite number."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return "-"
    return fmt.format(scale * f) if math.isfinite(f) else "-"


def _pct(value: Any) -> str:
    return _scaled(value, 100, "{:.2f}%")


def _ts(value: datetime | str | None) -> str:
    if value is None or isinstance(value, jinja2.Undefined):
        return "-"
    if isinstance(value, datetime):
        value = value.isoformat()
    return value[:19].replace("T", " ")


def _ms(value: Any) -> str:
    return _scaled(value, 1000, "{:.1f} ms")


def csrf_token(session_key: str) -> str:
    """The token every form of a session carries: an HMAC of a fixed label under the
    session's key, so it is unguessable without the key (which an HttpOnly cookie keeps
    from scripts) and needs no server-side state."""
    return hmac.new(session_key.encode(), b"stratum-dashboard-csrf", hashlib.sha256).hexdigest()


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ago=_ago, num=_num, pct=_pct, ts=_ts, ms=_ms)
    return env


@dataclass
class Site:
    """The dashboard of one control plane process."""

    parts: ControlParts
    env: jinja2.Environment = field(default_factory=environment)
    sampler: Sampler = field(init=False)
    auditor: Auditor = field(init=False)
    node: str = field(default_factory=socket.gethostname)

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.parts.supervisor)
        self.auditor = Auditor("control", AuditLog(self.meta))

    @property
    def meta(self) -> MetadataStore:
        return self.parts.store.meta

    @property
    def settings(self) -> Settings:
        return self.parts.settings

    @property
    def sup(self) -> Supervisor:
        return self.parts.supervisor

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` off the event loop: every store read blocks."""
        return await asyncio.to_thread(fn, *args)

    def render(self, request: Request, template: str, status: int = 200,
               **context: Any) -> HTMLResponse:
        token = getattr(request.state, "token", None)
        html = self.env.get_template(template).render(
            prefix=PREFIX, nav=NAV, path=request.url.path, actor=getattr(
                request.state, "actor", None), csrf=csrf_token(token) if token else "",
            **context)
        return HTMLResponse(html, status_code=status)


    def fragment(self, template: str, **context: Any) -> str:
        """A part of a page, for the live updates that replace it."""
        return self.env.get_template(template).render(prefix=PREFIX, **context)


def site_of(request: Request) -> Site:
    site: Site = request.app.state.site
    return site


__all__ = ["NAV", "PREFIX", "STATIC", "Site", "csrf_token", "environment", "site_of"]
