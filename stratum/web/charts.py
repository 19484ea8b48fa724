"""Chart documents as ``static/app.js`` draws them with uPlot: an x axis and named series
of equal length (None for a gap). Pages embed them with ``tojson``; live endpoints answer
``{"charts": {ID: chart}}`` and the page replaces each chart's data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stratum.web.live import Point


def chart(title: str, x: Sequence[float], series: Mapping[str, Sequence[float | None]], *,
          time: bool = False, xlabel: str = "", unit: str = "") -> dict[str, Any]:
    """``time``: x holds epoch seconds (a clock axis); otherwise plain numbers."""
    return {"title": title, "time": time, "xlabel": xlabel, "unit": unit, "x": list(x),
            "series": [{"label": k, "values": list(v)} for k, v in series.items()]}


def live_charts(points: Sequence[Point]) -> dict[str, dict[str, Any]]:
    """The deployment page's live charts from its samples."""
    t = [p.t for p in points]

    def ms(v: float | None) -> float | None:
        return None if v is None else round(1000 * v, 3)

    return {
        "rps": chart("Requests per second", t, {
            "inference": [p.rps for p in points],
            "feedback": [p.feedback_rps for p in points]}, time=True, unit="req/s"),
        "latency": chart("Replica latency", t, {
            "p50": [ms(p.p50) for p in points], "p99": [ms(p.p99) for p in points]},
            time=True, unit="ms"),
        "batch": chart("Rows per forward pass", t, {
            "mean batch size": [p.batch_mean for p in points]}, time=True, unit="rows"),
        "errors": chart("Error rate (5xx)", t, {
            "error rate": [p.error_rate for p in points]}, time=True, unit="share"),
    }


__all__ = ["chart", "live_charts"]
