"""``stratum models``: list, show and alias registered model versions."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from stratum.cli.audit import record_local
from stratum.cli.context import console, get_ctx, print_json
from stratum.store import Lineage, parse_ref

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_models(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="Only this model."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List model versions with their aliases and headline metrics."""
    meta = get_ctx(ctx).store.meta
    versions = meta.model_versions(name)
    alias_map = {n: meta.aliases(n) for n in {mv.name for mv in versions}}
    rows: list[dict[str, Any]] = [
        {"name": mv.name, "version": mv.version, "created_at": mv.created_at.isoformat(),
         "aliases": sorted(a for a, v in alias_map[mv.name].items() if v == mv.version),
         "metrics": mv.metrics, "architecture": mv.spec.get("architecture")}
        for mv in versions
    ]
    if as_json:
        print_json(rows)
        return
    t = Table(title="Model versions")
    for col in ("name", "version", "architecture", "aliases", "metrics", "created"):
        t.add_column(col)
    for r in rows:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in list(r["metrics"].items())[:4])
        t.add_row(r["name"], f"v{r['version']}", str(r["architecture"]),
                  ", ".join(r["aliases"]) or "-", metrics or "-", r["created_at"][:19])
    console.print(t)


@app.command("show")
def show(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="NAME[@VERSION|@ALIAS]"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show one version: spec, metrics, lineage, aliases."""
    meta = get_ctx(ctx).store.meta
    name, version = parse_ref(ref)
    mv = meta.model_version(name, version)
    aliases = sorted(a for a, v in meta.aliases(name).items() if v == mv.version)
    made = Lineage.model_validate(mv.spec.get("lineage") or {}).made_by()
    doc = {"name": mv.name, "version": mv.version, "created_at": mv.created_at.isoformat(),
           "aliases": aliases, "artifact_path": mv.artifact_path, "metrics": mv.metrics,
           "made_by": made, "spec": mv.spec}
    if as_json:
        print_json(doc)
        return
    console.print(f"[bold]{mv.name}[/] v{mv.version}  aliases: {', '.join(aliases) or '-'}")
    if made:  # a version registered by `stratum compress`
        console.print(f"made by: {made['pass']} {made['params']} from "
                      f"v{made['parent_version']} (compressed from v{made['root_version']}; "
                      f"report: {mv.artifact_path}/{made['report']})", highlight=False)
    console.print_json(data=doc)


@app.command("alias")
def alias(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="NAME@VERSION"),
    alias_name: str = typer.Argument(..., metavar="ALIAS", help="production, staging, ..."),
) -> None:
    """Point ALIAS at NAME@VERSION (atomic; recorded as an event)."""
    meta = get_ctx(ctx).store.meta
    name, version = parse_ref(ref)
    mv = meta.model_version(name, version)
    before = meta.aliases(name).get(alias_name)
    meta.set_alias(name, alias_name, mv.version, reason="cli")
    record_local(ctx, "alias.set", name, {"alias": alias_name, "before": before,
                                          "after": mv.version})
    console.print(f"{alias_name} → {name} v{mv.version}")


@app.command("history")
def history(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    limit: int = typer.Option(50, "--limit"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Registrations, alias moves and promotion decisions for one model, newest first."""
    events = get_ctx(ctx).store.meta.events(subject=name, limit=limit)
    rows: list[dict[str, Any]] = [
        {"ts": e.ts.isoformat(), "kind": e.kind, "payload": e.payload} for e in events
    ]
    if as_json:
        print_json(rows)
        return
    t = Table(title=f"History of {name}")
    for col in ("time", "event", "details"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["ts"][:19], r["kind"], str(r["payload"])[:100])
    console.print(t)
