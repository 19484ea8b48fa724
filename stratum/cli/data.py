"""``stratum data``: ingest, list, show."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from stratum.cli.context import console, err_console, get_ctx, print_json
from stratum.store import models as m

app = typer.Typer(no_args_is_help=True)


def version_doc(name: str, dv: m.DatasetVersion, full: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name, "version": dv.version, "created_at": dv.created_at.isoformat(),
        "source": dv.source, "rows": dv.num_rows, "task": dv.schema.get("task"),
        "shards": dv.shard_map.get("shards"), "replicas": dv.shard_map.get("replicas"),
    }
    if full:
        doc.update(schema=dv.schema, stats=dv.stats, cleaning=dv.cleaning,
                   shard_map=dv.shard_map, input_shape=dv.extra.get("input_shape"),
                   feature_names=dv.extra.get("feature_names"))
    return doc


@app.command("ingest")
def ingest_cmd(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="File, image folder, sql:URL::QUERY or builtin:NAME."),
    name: str = typer.Option(..., "--name", "-n", help="Dataset name."),
    shards: int | None = typer.Option(None, "--shards", help="Number of shards [settings]."),
    replicas: int | None = typer.Option(None, "--replicas", help="Copies of each shard."),
    shard_key: str | None = typer.Option(None, "--shard-key", help="Column to hash [row id]."),
    schema: Path | None = typer.Option(None, "--schema", help="Declared schema (YAML)."),
    backend: Literal["local", "ray"] | None = typer.Option(
        None, "--backend", help="Where rows are parsed and cleaned: this process, or the "
                                "Ray cluster's nodes (default: cluster.backend)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Clean, split, shard and version a dataset; prints the cleaning report. The same
    source gives the same version with either backend."""
    # pyarrow and the sources load here, not for every command: ``stratum.data`` is lazy.
    from stratum.data import Schema, ingest
    from stratum.data.preparers import preparer_for

    cli = get_ctx(ctx)
    preparer = preparer_for(backend or cli.settings.cluster.backend, cli.settings)
    declared = Schema.from_yaml(schema) if schema is not None else None
    with Progress(SpinnerColumn(), TextColumn("[bold]ingest[/] {task.description}"),
                  BarColumn(), TextColumn("{task.completed:,} rows"), TimeElapsedColumn(),
                  console=err_console, transient=True,
                  disable=as_json or not err_console.is_terminal) as bar:
        task = bar.add_task(source, total=None)
        result = ingest(
            source, name, cli.store,
            shards=shards or cli.settings.data.shards,
            replicas=replicas or cli.settings.data.replicas,
            shard_key=shard_key, schema=declared,
            progress=lambda n: bar.advance(task, n),
            batch_rows=cli.settings.data.batch_rows, preparer=preparer,
        )
    dv = result.version
    if as_json:
        print_json({**version_doc(name, dv), "created": result.created,
                    "backend": preparer.name, "cleaning": result.report.to_dict()})
        return
    t = Table(title=f"Cleaning report: {source}", show_header=False)
    for line in result.report.lines():
        t.add_row(line)
    console.print(t)
    state = "new version" if result.created else "unchanged (same content, same version)"
    console.print(f"[green]{name}@{dv.version[:12]}[/] {state}: {dv.num_rows:,} rows in "
                  f"{dv.shard_map['shards']} shards x {dv.shard_map['replicas']} replicas")


@app.command("list")
def list_cmd(ctx: typer.Context,
             as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")
             ) -> None:
    """List datasets with their newest version."""
    rows: list[dict[str, Any]] = [
        {**version_doc(ds.name, dv), "versions": n} if dv else {"name": ds.name, "versions": 0}
        for ds, dv, n in get_ctx(ctx).store.meta.datasets()
    ]
    if as_json:
        print_json(rows)
        return
    t = Table(title="Datasets")
    for col in ("name", "versions", "latest", "rows", "task", "shards x replicas", "source"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], str(r["versions"]), str(r.get("version", "-"))[:12],
                  f"{r.get('rows', 0):,}", str(r.get("task", "-")),
                  f"{r.get('shards')} x {r.get('replicas')}", str(r.get("source", "-")))
    console.print(t)


@app.command("show")
def show_cmd(ctx: typer.Context,
             ref: str = typer.Argument(..., help="NAME, NAME@latest or NAME@HASH-PREFIX."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")
             ) -> None:
    """Show a version: schema, statistics, cleaning report and shard map."""
    from stratum.data.cleaning import CleaningReport
    from stratum.data.dataset import parse_dataset_ref

    name, version = parse_dataset_ref(ref)
    dv = get_ctx(ctx).store.meta.dataset_version(name, version)
    doc = version_doc(name, dv, full=True)
    if as_json:
        print_json(doc)
        return
    console.print(f"[bold]{name}@{dv.version}[/]  {dv.num_rows:,} rows  task="
                  f"{doc['task']}  input shape={doc['input_shape']}  source={dv.source}")
    t = Table(title="Schema and statistics")
    for col in ("column", "type", "count", "missing", "mean", "std", "min", "max"):
        t.add_column(col)
    for feat in dv.schema["features"]:
        s = dv.stats.get("features", {}).get(feat["name"], {})
        if feat["type"] == "categorical":
            cells = [str(s.get("distinct", "")) + " distinct", str(s.get("missing", "")),
                     "", "", "", ""]
        else:
            cells = [_num(s.get(k)) for k in ("count", "missing", "mean", "std", "min", "max")]
        t.add_row(feat["name"], feat["type"], *cells)
    t.add_row(f"{dv.schema['target']} (target)", doc["task"], str(dv.stats.get("target", "")))
    console.print(t)
    console.print("splits: " + ", ".join(f"{k}={v:,}" for k, v in
                                         dv.stats.get("splits", {}).items()))
    t = Table(title="Cleaning report", show_header=False)
    for line in CleaningReport(**dv.cleaning).lines():
        t.add_row(line)
    console.print(t)
    t = Table(title="Shard map")
    for col in ("shard", "rows", "bytes", "sha256", "replicas"):
        t.add_column(col)
    for f in dv.shard_map["files"]:
        t.add_row(str(f["shard"]), f"{f['rows']:,}", f"{f['bytes']:,}", f["sha256"][:12],
                  "\n".join(f["paths"]))
    console.print(t)


def _num(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}"
