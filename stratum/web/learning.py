"""The Learner page: per model, the online learner's process, its feedback queue (depth,
leased, lag), its challengers with the gate's statistics, its promotions, input drift per
feature over time (the ``online.drift`` event of every window) and accuracy on feedback
(champion and challenger on the recent rows each gate judged on).

The queue is asked directly (``size``/``pending`` of the model's stream), bounded by
``QUEUE_TIMEOUT_S``; the learner's process is the pid in its lock file
(``{home}/learners/NAME.lock``) while that pid runs ``stratum learn``.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from stratum.control.lease import FileLease
from stratum.errors import NotFoundError
from stratum.queue import feedback_stream, open_queue
from stratum.store import models as m
from stratum.web.catalog import online_gates
from stratum.web.charts import chart
from stratum.web.site import Site, site_of

QUEUE_TIMEOUT_S = 3.0
MAX_MODELS = 20
MAX_WINDOWS = 200  # drift windows drawn
MAX_FEATURES = 8  # lines per drift chart: the features that drifted most


def learner_pid(site: Site, name: str) -> int | None:
    """The pid of the running ``stratum learn NAME`` of this home, if one runs here."""
    path = site.settings.home.expanduser().resolve() / "learners" / f"{name}.lock"
    if not path.exists():
        return None
    try:
        pid = int(FileLease(path).holder())
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except (ValueError, OSError):
        return None
    return pid if b"learn" in argv and name.encode() in argv else None


def _queue(site: Site, name: str) -> dict[str, Any]:
    assert site.settings.queue_url
    q = open_queue(site.settings.queue_url, feedback_stream(name))
    try:
        return {"depth": q.size(), "leased": q.pending()}
    finally:
        q.close()


async def queue_state(site: Site, name: str) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(asyncio.to_thread(_queue, site, name), QUEUE_TIMEOUT_S)
    except Exception as exc:  # an unreachable queue is a fact to show, not a failed page
        return {"depth": None, "leased": None, "error": f"{type(exc).__name__}: {exc}"}


def _aware(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def _state(site: Site, name: str) -> dict[str, Any]:
    applied = site.meta.events(subject=name, kind="online.feedback", limit=1)
    decisions = site.meta.events(subject=name, kind="online.decision", limit=1)
    return {"name": name, "pid": learner_pid(site, name),
            "last_applied": applied[0].ts if applied else None,
            "last_decision": decisions[0].payload if decisions else None}


async def learner_states(site: Site) -> list[dict[str, Any]]:
    """What the overview shows of each model's learner."""
    names = sorted({mv.name for mv in await site.run(site.meta.model_versions)})[:MAX_MODELS]
    out = []
    for name in names:
        state = await site.run(_state, site, name)
        state.update(await queue_state(site, name))
        if state["pid"] is None and state["last_applied"] is None and not state["depth"]:
            continue  # never learned online and nothing waits
        last = state["last_applied"]
        state["lag_s"] = ((datetime.now(UTC) - _aware(last)).total_seconds()
                          if last is not None and state["depth"] else 0.0)
        out.append(state)
    return out


def drift_charts(events: list[m.Event]) -> dict[str, dict[str, Any]]:
    """PSI and KS per feature by window (oldest first), for the features that drifted most."""
    windows = list(reversed(events))[-MAX_WINDOWS:]
    peak: dict[str, float] = {}
    for ev in windows:
        for f in ev.payload.get("features") or []:
            peak[str(f.get("name"))] = max(peak.get(str(f.get("name")), 0.0),
                                           float(f.get("psi") or 0.0))
    top = sorted(peak, key=lambda k: -peak[k])[:MAX_FEATURES]
    t = [_aware(ev.ts).timestamp() for ev in windows]
    out = {}
    for key, title in (("psi", "PSI per feature"), ("ks_statistic", "KS statistic per feature")):
        series = {}
        for feat in top:
            values = []
            for ev in windows:
                row = next((f for f in ev.payload.get("features") or []
                            if str(f.get("name")) == feat), None)
                values.append(row.get(key) if row else None)
            series[feat] = values
        out[key] = chart(title, t, series, time=True)
    out["drifted"] = chart("Share of features drifted", t, {
        "drifted": [ev.payload.get("drifted_fraction") for ev in windows]}, time=True)
    return out


def accuracy_chart(gates: list[dict[str, Any]]) -> dict[str, Any]:
    """Champion and challenger on the recent feedback rows of each decision."""
    rows = list(reversed(gates))
    t = [_aware(g["run"].started_at).timestamp() for g in rows]
    d = [g["decision"] for g in rows]
    return chart("Accuracy on recent feedback (at each gate)", t, {
        "champion": [x.get("champion_recent") for x in d],
        "challenger": [x.get("challenger_recent") for x in d],
        "champion holdout": [x.get("champion_holdout") for x in d]}, time=True)


def _detail(site: Site, name: str) -> dict[str, Any]:
    if not site.meta.model_versions(name):
        raise NotFoundError(f"model {name!r} does not exist", hint="see the Models page")
    gates = online_gates(site.meta, name)
    drift = site.meta.events(subject=name, kind="online.drift", limit=MAX_WINDOWS)
    promotions = [e for e in site.meta.events(subject=name, kind="alias.moved", limit=200)
                  if str(e.payload.get("reason", "")).startswith("online learner")]
    return {"gates": gates, "promotions": promotions, "drift": drift_charts(drift),
            "windows": len(drift), "last_window": drift[0].payload if drift else None,
            "accuracy": accuracy_chart(gates),
            "alerts": site.meta.events(subject=name, kind="alert.*", limit=20),
            **_state(site, name)}


async def learner(request: Request) -> Response:
    site = site_of(request)
    states = await learner_states(site)
    name = request.query_params.get("model") or (states[0]["name"] if states else "")
    detail = None
    if name:
        detail = await site.run(_detail, site, name)
        detail.update(await queue_state(site, name))
    return site.render(request, "learner.html", states=states, name=name, detail=detail,
                       home=os.fspath(site.settings.home))


__all__ = ["accuracy_chart", "drift_charts", "learner", "learner_pid", "learner_states",
           "queue_state"]
