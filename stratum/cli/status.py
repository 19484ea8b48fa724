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
            "deployments": deployments, "online": _online(meta, list(models)),
            "events": events}


def _online(meta: Any, names: list[str]) -> list[dict[str, Any]]:
    """Per model: the learner's recent decisions and the last drift alert."""
    out = []
    for name in names:
        decisions = meta.events(subject=name, kind="online.decision", limit=50)
        alerts = meta.events(subject=name, kind="alert.drift.*", limit=1)
        if not decisions and not alerts:
            continue
        last = decisions[0].payload if decisions else {}
        out.append({
            "model": name, "challengers": len(decisions),
            "promoted": sum(bool(e.payload.get("promote")) for e in decisions),
            "last": {k: last.get(k) for k in ("version", "promote", "reason",
                                              "challenger_recent", "champion_recent",
                                              "challenger_holdout", "champion_holdout")}
            if last else None,
            "last_alert": {"ts": alerts[0].ts.isoformat(), "kind": alerts[0].kind,
                           "message": alerts[0].payload.get("message")} if alerts else None,
        })
    return out


def control_plane(settings: Any, store: Any) -> dict[str, Any]:
    """Whether a control plane leads: this home's record, else the store's leader row
    (a leader of another host answers its /health)."""
    import httpx

    from stratum.control.discovery import read_record
    from stratum.store.runtime import RuntimeStore

    rec = read_record(settings)
    if rec is not None:
        return {"running": True, "url": rec["url"], "pid": rec["pid"]}
    leader = RuntimeStore(store.meta).leader()
    if leader is not None:
        try:
            if httpx.get(leader.url + "/health", timeout=1.0).json().get("role") == "leader":
                return {"running": True, "url": leader.url, "pid": leader.pid}
        except (httpx.HTTPError, ValueError):
            pass
    return {"running": False, "url": None, "pid": None}


def register(app: typer.Typer) -> None:
    @app.command()
    def status(
        ctx: typer.Context,
        as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    ) -> None:
        """Show datasets, models, deployments and recent events."""
        c = get_ctx(ctx)
        data = collect_status(c.store)
        data["control"] = control_plane(c.settings, c.store)
        if not data["control"]["running"]:
            # What was observed is only what it was: nobody watches the deployments now.
            for dep in data["deployments"]:
                dep["status"] = f"unknown (last seen {dep['status']}; no control plane)"
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
        ctl = data["control"]
        console.print(f"control plane: {ctl['url']} (pid {ctl['pid']}, leading)"
                      if ctl["running"] else "[bold yellow]control plane: not running[/] — "
                      "deployments are not watched; any deploy command starts it")
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
            if auto := spec.get("autoscale"):
                wanted += f" (auto {auto['min_replicas']}..{auto['max_replicas']})"
            if spec.get("canary"):
                wanted += f" +v{spec['canary']['version']} {spec['canary']['percent']:g}%"
            traffic = ", ".join(f"v{x['version']} {'shadow' if x.get('shadow') else x['weight']}"
                                f"{'' if x.get('shadow') else '%'}" for x in obs.get("traffic", []))
            t.add_row(dep["name"], dep["status"], wanted,
                      ", ".join(f"v{v}: {h}/{n} healthy" for v, (h, n) in
                                sorted(per_version.items())) or "-",
                      traffic or "-", (obs.get("gateway") or {}).get("url") or "-")
        console.print(t)
        if data["online"]:
            t = Table(title="Online learning (last 50 challengers)")
            for col in ("model", "challengers", "promoted", "last decision", "last drift alert"):
                t.add_column(col)
            for o in data["online"]:
                last, alert = o["last"], o["last_alert"]
                t.add_row(o["model"], str(o["challengers"]), str(o["promoted"]),
                          f"v{last['version']}: {'promoted' if last['promote'] else 'kept'} — "
                          f"{last['reason']}" if last else "-",
                          f"{alert['ts'][:19]} {alert['message']}" if alert else "-")
            console.print(t)
        if data["events"]:
            t = Table(title="Recent events")
            for col in ("time", "kind", "subject", "details"):
                t.add_column(col)
            for ev in data["events"]:
                t.add_row(ev["ts"][:19], ev["kind"], ev["subject"], str(ev["payload"])[:80])
            console.print(t)
