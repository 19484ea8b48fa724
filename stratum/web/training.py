"""The Training runs pages: every run, and one run's progress while it trains.

The loss and throughput curves are the metrics the training loop streams to the store
(``train.metrics.MetricStream``); the workers' state is what the launcher keeps in the
run's folder of this host's home (``workers.json``: the pids of the current attempt;
``progress.json``: attempt, epoch, step, phase), so it shows for runs started from this
home on this host. A worker is running while its pid lives; restarts are the attempts
after the first (the run's summary lists them once it has finished).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stratum.control.procs import Proc
from stratum.errors import NotFoundError
from stratum.store import models as m
from stratum.web.catalog import epoch_chart
from stratum.web.charts import chart
from stratum.web.site import Site, site_of

_RUN_ID = re.compile(r"^[0-9a-fA-F-]{8,36}$")
MAX_FILE_BYTES = 64 * 1024
MAX_POINTS = 2000  # per curve: the newest ones


async def runs(request: Request) -> Response:
    site = site_of(request)
    name = request.query_params.get("name") or None
    rows = await site.run(lambda: site.meta.runs(name, limit=200))
    return site.render(request, "runs.html", runs=rows, name=name or "")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return {}
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def progress(site: Site, run: m.Run) -> dict[str, Any]:
    """The run's progress and its workers, as the launcher left them in the run folder."""
    folder = site.settings.home.expanduser().resolve() / "runs" / run.id
    prog = _read_json(folder / "progress.json")
    pids = [int(p) for p in _read_json(folder / "workers.json").get("pids", [])
            if isinstance(p, int)]
    live = run.status == "running"
    workers = [{"rank": rank, "pid": pid,
                "state": ("running" if Proc(pid).alive() else "exited") if live else "finished"}
               for rank, pid in enumerate(pids)]
    summary = run.summary or {}
    done_restarts = summary.get("restarts")
    restarts = len(done_restarts) if isinstance(done_restarts, list) else \
        int(prog.get("attempt") or 0)
    return {"progress": prog, "workers": workers, "restarts": restarts,
            "restart_log": done_restarts if isinstance(done_restarts, list) else []}


def curves(metrics: list[m.Metric]) -> dict[str, dict[str, Any]]:
    """Loss and samples/s by step; the epoch metrics by epoch."""
    out: dict[str, dict[str, Any]] = {}
    for key, title, unit in (("loss", "Training loss", ""),
                             ("samples_per_s", "Samples per second", "samples/s")):
        rows = [r for r in metrics if r.key == key][-MAX_POINTS:]
        if rows:
            out[key] = chart(title, [r.step for r in rows], {key: [r.value for r in rows]},
                             xlabel="step", unit=unit)
    epochs = epoch_chart(metrics, "Per epoch")
    if epochs is not None:
        out["epochs"] = epochs
    return out


def _run_doc(site: Site, run_id: str) -> dict[str, Any]:
    if not _RUN_ID.match(run_id):
        raise NotFoundError(f"run {run_id!r} does not exist")
    run = site.meta.run(run_id)
    metrics = site.meta.metrics(run_id)
    dataset = None
    if run.dataset_version_id is not None:
        dataset = next((f"{ds.name}@{dv.version[:12]}" for ds, dv, _ in site.meta.datasets()
                        if dv is not None and dv.id == run.dataset_version_id), None)
    versions = [mv for mv in site.meta.model_versions(run.name) if mv.run_id == run.id]
    latest = {}
    for row in metrics:
        if row.epoch is not None or row.key in ("loss", "samples_per_s"):
            latest[row.key] = row
    last_epoch = max((r.epoch for r in metrics if r.epoch), default=None)
    last_step = (run.summary or {}).get("global_step") or max((r.step for r in metrics),
                                                              default=None)
    return {"run": run, "charts": curves(metrics), "dataset": dataset, "versions": versions,
            "latest": latest, "last_epoch": last_epoch, "last_step": last_step,
            **progress(site, run)}


async def run_page(request: Request) -> Response:
    site = site_of(request)
    doc = await site.run(_run_doc, site, request.path_params["run_id"])
    return site.render(request, "run.html", **doc)


async def run_live(request: Request) -> Response:
    """The live part of the run page: the progress fragment and the curves."""
    site = site_of(request)
    doc = await site.run(_run_doc, site, request.path_params["run_id"])
    html = site.fragment("run_progress.html", **doc)
    return JSONResponse({"html": html, "charts": doc["charts"],
                         "running": doc["run"].status == "running"})


__all__ = ["curves", "progress", "run_live", "run_page", "runs"]
