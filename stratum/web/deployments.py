"""The Deployments pages: the wanted spec, the replicas as the supervisor sees them now
(state, node, version, whether a gateway ejected them), the traffic split, and live
charts of request rate, latency and batch size (``web.live``). The actions on the page
are in ``web.actions``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stratum.control.spec import load_spec
from stratum.store import models as m
from stratum.web.charts import live_charts
from stratum.web.live import Snapshot
from stratum.web.site import Site, site_of

MAX_EVENTS = 30


def replicas(site: Site, dep: m.Deployment, snap: Snapshot | None) -> list[dict[str, Any]]:
    """The replicas now: the supervisor's own view when it runs the deployment, else the
    last observed document; with what the last sample saw of each."""
    st = site.sup.states.get(dep.name)
    if st is not None:
        rows = [{"id": r.id, "version": r.version, "pid": r.pid, "port": r.port,
                 "url": r.url, "state": r.state, "healthy": r.healthy,
                 "swapping": r.swapping} for r in st.replicas.values()]
    else:
        rows = [dict(r) for r in (dep.observed or {}).get("replicas", [])
                if isinstance(r, dict)]
    seen = snap.replicas if snap is not None else {}
    for row in rows:
        row.setdefault("node", site.node)  # local processes; a remote placement names its own
        live = seen.get(str(row.get("id")), {})
        row["ejected"] = live.get("ejected")
        row["rps"] = live.get("rps")
        row["inflight"] = live.get("inflight")
    return sorted(rows, key=lambda r: str(r.get("id")))


def summary(site: Site, dep: m.Deployment, snap: Snapshot | None) -> dict[str, Any]:
    """One deployment as the overview and the list show it."""
    reps = replicas(site, dep, snap)
    obs = dep.observed or {}
    return {"dep": dep, "spec": dep.spec or {}, "observed": obs,
            "ready": sum(1 for r in reps if r.get("state") == "ready" and r.get("healthy")),
            "replicas": len(reps), "gateway": (obs.get("gateway") or {}).get("url"),
            "point": snap.point if snap is not None else None,
            "watched": dep.name in site.sup.states}


async def sample_all(site: Site, deps: list[m.Deployment]) -> dict[str, Snapshot | None]:
    site.sampler.forget_missing(d.name for d in deps)
    return {d.name: await site.sampler.sample(d.name) for d in deps}


async def deployments(request: Request) -> Response:
    site = site_of(request)
    deps = await site.run(site.meta.deployments)
    snaps = await sample_all(site, deps)
    return site.render(request, "deployments.html",
                       rows=[summary(site, d, snaps[d.name]) for d in deps])


def _page_doc(site: Site, name: str) -> dict[str, Any]:
    dep = site.meta.deployment(name)  # NotFoundError: a 404 page
    spec = load_spec(dep.spec)
    model = spec.model if spec is not None else ""
    versions = [mv.version for mv in site.meta.model_versions(model)] if model else []
    return {"dep": dep, "spec": spec, "versions": list(reversed(versions)),
            "aliases": site.meta.aliases(model) if model else {},
            "events": site.meta.events(subject=name, limit=MAX_EVENTS)}


async def deployment(request: Request) -> Response:
    site = site_of(request)
    doc = await site.run(_page_doc, site, request.path_params["name"])
    snap = await site.sampler.sample(doc["dep"].name)
    return site.render(request, "deployment.html", **doc,
                       replicas=replicas(site, doc["dep"], snap),
                       charts=live_charts(site.sampler.series(doc["dep"].name)),
                       point=snap.point if snap else None, done=_done(request))


async def deployment_live(request: Request) -> Response:
    site = site_of(request)
    name = request.path_params["name"]
    dep = await site.run(site.meta.deployment, name)
    snap = await site.sampler.sample(name)
    html = site.fragment("deployment_live.html", dep=dep, replicas=replicas(site, dep, snap),
                         point=snap.point if snap else None,
                         traffic=(dep.observed or {}).get("traffic") or [])
    return JSONResponse({"html": html, "charts": live_charts(site.sampler.series(name))})


def _done(request: Request) -> str:
    """The action just carried out (``?done=``), one of a fixed set: never echoed text."""
    done = request.query_params.get("done", "")
    return done if done in ("rollback", "scale", "canary", "alias") else ""


async def overview_rows(site: Site) -> list[dict[str, Any]]:
    deps = await site.run(site.meta.deployments)
    snaps = await sample_all(site, deps)
    return [summary(site, d, snaps[d.name]) for d in deps]


__all__ = ["deployment", "deployment_live", "deployments", "overview_rows", "replicas",
           "summary"]
