"""The Overview page: datasets, models, deployments with their health and live rates,
the learners, and the alerts still open. The live part (deployments, learners, alerts)
is a fragment the page fetches again every few seconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stratum.store import models as m
from stratum.store.metadata import MetadataStore
from stratum.web.catalog import datasets_summary, models_summary
from stratum.web.deployments import overview_rows
from stratum.web.learning import learner_states
from stratum.web.site import Site, site_of

OPEN_ALERT_S = 15 * 60  # an alert fired within this long is open (they re-fire while true)
MAX_ALERTS = 200


def open_alerts(meta: MetadataStore) -> list[m.Event]:
    """The latest alert of each (rule, subject) fired within ``OPEN_ALERT_S``."""
    since = datetime.now(UTC) - timedelta(seconds=OPEN_ALERT_S)
    latest: dict[tuple[str, str], m.Event] = {}
    for ev in meta.events(kind="alert.*", limit=MAX_ALERTS):
        ts = ev.ts.replace(tzinfo=UTC) if ev.ts.tzinfo is None else ev.ts
        if ts >= since:
            latest.setdefault((ev.kind, ev.subject), ev)
    return list(latest.values())


async def _live(site: Site) -> dict[str, Any]:
    return {"deployments": await overview_rows(site), "learners": await learner_states(site),
            "alerts": await site.run(open_alerts, site.meta)}


async def overview(request: Request) -> Response:
    site = site_of(request)
    datasets = await site.run(datasets_summary, site.meta)
    models = await site.run(models_summary, site.meta)
    return site.render(request, "overview.html", datasets=datasets, models=models,
                       **await _live(site))


async def overview_live(request: Request) -> Response:
    site = site_of(request)
    return JSONResponse({"html": site.fragment("overview_live.html", **await _live(site))})


__all__ = ["open_alerts", "overview", "overview_live"]
