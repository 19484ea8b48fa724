"""The Datasets and Models pages: what the store holds, read whole, nothing live.

A model's page gathers its versions and aliases, the lineage graph, each version's
metrics, the learning curves its training run stored per epoch, and every gate decision:
the online learner's (champion vs. challenger, from the challenger's run) and
``stratum compress``'s (the child's report).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from stratum.compress.report import REPORT_FILE
from stratum.errors import NotFoundError, StratumError
from stratum.store import models as m
from stratum.store.metadata import MetadataStore
from stratum.web import lineage
from stratum.web.charts import chart
from stratum.web.site import PREFIX, Site, site_of

MAX_REPORT_BYTES = 1 << 20
MAX_CURVES = 5  # training runs whose learning curves a model page draws
MAX_GATES = 100


def datasets_summary(meta: MetadataStore) -> list[dict[str, Any]]:
    return [{"name": ds.name, "versions": n, "latest": dv, "created": ds.created_at}
            for ds, dv, n in meta.datasets()]


async def datasets(request: Request) -> Response:
    site = site_of(request)
    rows = await site.run(datasets_summary, site.meta)
    return site.render(request, "datasets.html", datasets=rows)


async def dataset(request: Request) -> Response:
    site = site_of(request)
    name = request.path_params["name"]
    versions = await site.run(site.meta.dataset_versions, name)
    if not versions:
        raise NotFoundError(f"dataset {name!r} does not exist", hint="see the Datasets page")
    wanted = request.query_params.get("version")
    chosen = next((v for v in versions if wanted and v.version.startswith(wanted)), versions[0])
    if wanted and not chosen.version.startswith(wanted):
        raise NotFoundError(f"dataset {name}@{wanted} does not exist")
    features = (chosen.schema or {}).get("features") or []
    stats = (chosen.stats or {}).get("features") or {}
    return site.render(request, "dataset.html", name=name, versions=versions, dv=chosen,
                       features=features, stats=stats,
                       target=(chosen.stats or {}).get("target") or {},
                       splits=(chosen.stats or {}).get("splits") or {},
                       cleaning=chosen.cleaning or {}, shards=chosen.shard_map or {})


def models_summary(meta: MetadataStore) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for mv in meta.model_versions():
        entry = out.setdefault(mv.name, {"name": mv.name, "versions": 0, "latest": mv})
        entry["versions"] += 1
        entry["latest"] = mv
    for name, entry in out.items():
        entry["aliases"] = meta.aliases(name)
    return list(out.values())


async def models(request: Request) -> Response:
    site = site_of(request)
    return site.render(request, "models.html", models=await site.run(models_summary, site.meta))


def _model(site: Site, name: str) -> dict[str, Any]:
    meta = site.meta
    graph = lineage.build(meta, name, PREFIX)  # NotFoundError for an unknown model
    versions = list(reversed(meta.model_versions(name)))
    aliases = meta.aliases(name)
    by_version: dict[int, list[str]] = {}
    for alias, v in sorted(aliases.items()):
        by_version.setdefault(v, []).append(alias)
    parents = {mv.id: mv.version for mv in versions}
    rows = [{"mv": mv, "aliases": by_version.get(mv.version, []),
             "parent": parents.get(mv.parent_id) if mv.parent_id else None,
             "made_by": lineage.made_by(mv.spec) if mv.parent_id else "training"}
            for mv in versions]
    return {"name": name, "graph": graph, "versions": rows, "aliases": aliases,
            "curves": _curves(meta, versions), "online_gates": online_gates(meta, name),
            "compress_gates": _compress_gates(site, versions),
            "alias_moves": meta.events(subject=name, kind="alias.moved", limit=50)}


def _curves(meta: MetadataStore, versions: list[m.ModelVersion]) -> list[dict[str, Any]]:
    """Per-epoch metrics of the training runs behind the newest versions."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for mv in versions:
        if not mv.run_id or mv.run_id in seen or len(out) >= MAX_CURVES:
            continue
        seen.add(mv.run_id)
        chart_doc = epoch_chart(meta.metrics(mv.run_id), f"v{mv.version} (run {mv.run_id[:8]})")
        if chart_doc is not None:
            out.append({"version": mv.version, "run_id": mv.run_id, "chart": chart_doc})
    return out


def epoch_chart(metrics: list[m.Metric], title: str) -> dict[str, Any] | None:
    """Validation and epoch metrics by epoch; None when the run stored none."""
    by_key: dict[str, dict[int, float]] = {}
    for row in metrics:
        if row.epoch is not None and row.key.startswith(("val_", "epoch_loss")):
            by_key.setdefault(row.key, {})[row.epoch] = row.value
    epochs = sorted({e for values in by_key.values() for e in values})
    if not epochs:
        return None
    return chart(title, epochs, {k: [v.get(e) for e in epochs] for k, v in sorted(
        by_key.items())}, xlabel="epoch")


def online_gates(meta: MetadataStore, name: str) -> list[dict[str, Any]]:
    runs = [r for r in meta.runs(name, limit=MAX_GATES) if r.strategy == "online"]
    return [{"run": r, "decision": (r.summary or {}).get("decision") or {},
             "outcome": (r.summary or {}).get("outcome", r.status),
             "version": (r.summary or {}).get("version"),
             "parent": (r.config or {}).get("parent_version"),
             "trigger": (r.config or {}).get("trigger")} for r in runs]


def _compress_gates(site: Site, versions: list[m.ModelVersion]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for mv in versions:
        comp = (mv.spec.get("lineage") or {}).get("compression")
        if not comp or len(out) >= MAX_GATES:
            continue
        report: dict[str, Any] = {}
        try:
            raw = site.parts.store.artifacts.get_bytes(f"{mv.artifact_path}/{REPORT_FILE}")
            if len(raw) <= MAX_REPORT_BYTES:
                report = orjson.loads(raw)
        except (StratumError, OSError, orjson.JSONDecodeError):
            report = {}
        out.append({"mv": mv, "pass": comp.get("pass"), "params": comp.get("params") or {},
                    "gate": report.get("gate") or {}, "vs_parent": report.get("vs_parent") or {},
                    "parent": (mv.spec.get("lineage") or {}).get("parent_version")})
    return out


async def model(request: Request) -> Response:
    site = site_of(request)
    doc = await site.run(_model, site, request.path_params["name"])
    return site.render(request, "model.html", **doc, node_w=lineage.NODE_W,
                       node_h=lineage.NODE_H)


__all__ = ["dataset", "datasets", "epoch_chart", "model", "models", "online_gates"]
