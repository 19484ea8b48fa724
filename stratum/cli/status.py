"""``stratum status``: datasets, models and deployments at a glance."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from stratum.cli.context import console, get_ctx, print_json


def collect_status(store: Any) -> dict[str, Any]:
    meta = store.meta
    datasets = [
        {"name": ds.name, "versions": n, "latest": dv.version[:12] if dv else None,
         "rows": dv.num_rows if dv else 0}
        for ds, dv, n in meta.datasets()
    ]
    models: dict[str, dict[str, Any]] = {}
    for mv in meta.model_versions():
        entry = models.setdefault(mv.name, {"name": mv.name, "versions": 0, "latest": 0})
        entry["versions"] += 1
        entry["latest"] = max(entry["latest"], mv.version)
    for name, entry in models.items():
        entry["aliases"] = meta.aliases(name)
    deployments = [
        {"name": d.name, "status": d.status, "spec": d.spec, "observed": d.observed}
        for d in meta.deployments()
    ]
    events = [
        {"ts": e.ts.isoformat(), "kind": e.kind, "subject": e.subject, "payload": e.payload}
        for e in meta.events(limit=10)
    ]
    return {"datasets": datasets, "models": list(models.values()),
            "deployments": deployments, "events": events}


def register(app: typer.Typer) -> None:
    @app.command()
    def status(
        ctx: typer.Context,
        as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    ) -> None:
        """Show datasets, models, deployments and recent events."""
        data = collect_status(get_ctx(ctx).store)
        if as_json:
            print_json(data)
            return
        t = Table(title="Datasets")
        for col in ("name", "versions", "latest", "rows"):
            t.add_column(col)
        for d in data["datasets"]:
            t.add_row(d["name"], str(d["versions"]), d["latest"] or "-", f"{d['rows']:,}")
        console.print(t)
        t = Table(title="Models")
        for col in ("name", "versions", "latest", "aliases"):
            t.add_column(col)
        for mdl in data["models"]:
            aliases = ", ".join(f"{a}→v{v}" for a, v in sorted(mdl["aliases"].items()))
            t.add_row(mdl["name"], str(mdl["versions"]), f"v{mdl['latest']}", aliases or "-")
        console.print(t)
        t = Table(title="Deployments")
        for col in ("name", "status", "wanted", "replicas", "traffic", "gateway"):
            t.add_column(col)
        for dep in data["deployments"]:
            spec, obs = dep["spec"], dep["observed"]
            replicas = obs.get("replicas", [])
            per_version: dict[int, list[int]] = {}
            for r in replicas:  # version -> [healthy, total]
                n = per_version.setdefault(r.get("version", 0), [0, 0])
                n[0] += bool(r.get("healthy"))
                n[1] += 1
            wanted = f"{spec.get('model', '-')}@v{spec.get('version', '?')} x{spec.get('replicas')}"
            if spec.get("canary"):
                wanted += f" +v{spec['canary']['version']} {spec['canary']['percent']:g}%"
            traffic = ", ".join(f"v{x['version']} {'shadow' if x.get('shadow') else x['weight']}"
                                f"{'' if x.get('shadow') else '%'}" for x in obs.get("traffic", []))
            t.add_row(dep["name"], dep["status"], wanted,
                      ", ".join(f"v{v}: {h}/{n} healthy" for v, (h, n) in
                                sorted(per_version.items())) or "-",
                      traffic or "-", (obs.get("gateway") or {}).get("url") or "-")
        console.print(t)
        if data["events"]:
            t = Table(title="Recent events")
            for col in ("time", "kind", "subject", "details"):
                t.add_column(col)
            for ev in data["events"]:
                t.add_row(ev["ts"][:19], ev["kind"], ev["subject"], str(ev["payload"])[:80])
            console.print(t)
