"""``stratum audit``: who did which admin action, from where, and what changed — read
straight from the metadata store, as ``stratum status`` does (whoever can read the store
may read its audit log). Also ``record_local``: the audit record of an admin action the CLI
makes on the store itself (keys, aliases), with the operating-system user as the actor.
"""

from __future__ import annotations

import getpass
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import typer
from rich.table import Table

from stratum.cli.context import console, get_ctx
from stratum.errors import ConfigError
from stratum.store.audit import COMPONENTS, AuditLog, Auditor

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``7d`` (before now) or an ISO time (UTC unless it says otherwise).

    >>> parse_since("2h", datetime(2026, 1, 1, 12, tzinfo=UTC)).isoformat()
    '2026-01-01T10:00:00+00:00'
    >>> parse_since("2026-01-01T08:00").isoformat()
    '2026-01-01T08:00:00+00:00'
    """
    m = _DURATION.match(text.strip())
    if m:
        return (now or datetime.now(UTC)) - timedelta(seconds=float(m[1]) * _UNIT_S[m[2]])
    try:
        ts = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--since {text!r} is neither a duration nor an ISO time",
                          hint="use e.g. 30m, 2h, 7d or 2026-01-31T08:00") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def record_local(ctx: typer.Context, action: str, target: str,
                 detail: dict[str, Any] | None = None) -> None:
    """Audit an admin action the CLI made on the store directly (never fails it)."""
    Auditor("cli", AuditLog(get_ctx(ctx).store.meta)).record_now(
        f"os:{getpass.getuser()}", "local", action, target, 200, detail)


def register(app: typer.Typer) -> None:
    @app.command()
    def audit(
        ctx: typer.Context,
        since: str | None = typer.Option(None, "--since", help="A duration (30m, 2h, 7d) "
                                         "or an ISO time."),
        actor: str | None = typer.Option(None, "--actor", help="Part of the actor: "
                                         "key:ID, a key name, supervisor, anonymous, os:USER."),
        action: str | None = typer.Option(None, "--action", help="deploy, undeploy, scale, "
                                          "rollback, routes.put, swap, drain, keys.create, "
                                          "...; * matches any text (keys.*)."),
        component: str | None = typer.Option(None, "--component",
                                             help=f"One of {', '.join(COMPONENTS)}."),
        limit: int = typer.Option(50, "--limit", help="At most this many, newest first."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    ) -> None:
        """Admin actions and refused attempts at them: who (key id and name, supervisor,
        anonymous), from where, what, the outcome, and what changed. Newest first."""
        if component is not None and component not in COMPONENTS:
            raise ConfigError(f"--component {component!r} is not one of "
                              f"{', '.join(COMPONENTS)}")
        if not 1 <= limit <= 100_000:
            raise ConfigError(f"--limit {limit} must be between 1 and 100000")
        start = parse_since(since) if since is not None else None
        entries = AuditLog(get_ctx(ctx).store.meta).entries(
            since=start, actor=actor, action=action, component=component, limit=limit)
        if as_json:
            for e in entries:
                typer.echo(orjson.dumps(e.to_dict(), default=str).decode())
            return
        t = Table(title="Audit log (newest first)")
        for col in ("time", "actor", "source", "component", "action", "target", "outcome",
                    "what changed"):
            t.add_column(col, overflow="fold")
        for e in entries:
            ok = 200 <= e.outcome < 300
            t.add_row((e.ts.isoformat() if e.ts else "-")[:19], e.actor, e.source,
                      e.component, e.action, e.target or "-",
                      f"[{'green' if ok else 'red'}]{e.outcome}[/]",
                      orjson.dumps(e.detail).decode()[:160] if e.detail else "-")
        console.print(t)
        if not entries:
            console.print("no audit records match")
