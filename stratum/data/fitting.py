"""After pass 1: imputation values per column, and the preprocessing pipeline fitted on
the train split (with those values filled in, accounted for analytically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stratum.data.cleaning import CleaningReport
from stratum.data.preprocessing import Pipeline, build_pipeline, fit_numeric_step
from stratum.data.schema import Schema
from stratum.data.stats import StatsAccumulator


def _column(spills: list[Path], name: str) -> np.ndarray:
    """One column of the whole dataset, read back from the spill files (median, mode)."""
    parts = [pq.read_table(p, columns=[name]).column(name) for p in spills if p.exists()]
    values = pa.chunked_array([c for part in parts for c in part.chunks], pa.float64())
    x = values.to_numpy()
    return x[~np.isnan(x)]


def fill_values(schema: Schema, stats: StatsAccumulator, spills: list[Path],
                report: CleaningReport) -> dict[str, Any]:
    """Imputation value of every column that has missing values; recorded in ``report``."""
    fills: dict[str, Any] = {}
    for feat in schema.features:
        missing = stats.total_missing(feat.name)
        if not missing or feat.strategy == "drop" or feat.type == "image":
            continue
        strategy = feat.strategy
        value: Any
        if feat.type == "categorical":
            value = str(feat.fill_value) if strategy == "constant" else stats.mode(feat.name)
            if value is None:
                value = ""
        elif strategy == "constant":
            value = float(feat.fill_value)  # type: ignore[arg-type]
        elif strategy == "mean":
            mean = stats.overall(feat.name).summary()["mean"]
            value = float(mean) if mean is not None else 0.0
        else:
            x = _column(spills, feat.name)
            if not len(x):
                value = 0.0
            elif strategy == "median":
                value = float(np.median(x))
            else:
                uniq, counts = np.unique(x, return_counts=True)
                value = float(uniq[np.argmax(counts)])
        fills[feat.name] = value
        report.imputed[feat.name] = {"count": missing, "strategy": strategy, "value": value}
    return fills


def fit_pipeline(schema: Schema, stats: StatsAccumulator, fills: dict[str, Any]) -> Pipeline:
    """Fit on the train split; an empty train split (tiny data) falls back to all rows."""
    steps: list[dict[str, Any]] = []
    centers: list[float] = []
    scales: list[float] = []
    serve_fills: list[float] = []
    for feat in schema.features:
        if feat.type == "categorical":
            cats = feat.categories or sorted(stats.categories.get(feat.name, {}))
            fill = fills.get(feat.name)
            if fill is not None and fill not in cats:
                cats = sorted([*cats, fill])
            steps.append({"name": feat.name, "kind": "categorical", "categories": cats})
            continue
        train = stats.numeric[feat.name][0]
        moments = train if train.n else stats.overall(feat.name)
        if feat.type == "image":
            hi = feat.max if feat.max is not None else moments.hi
            max_value = float(hi) if hi and np.isfinite(hi) and hi > 0 else 1.0
            summary = moments.summary()
            mean = (summary["mean"] or 0.0) / max_value
            std = (summary["std"] or 1.0) / max_value or 1.0
            steps.append({"name": feat.name, "kind": "image", "shape": feat.shape,
                          "max_value": max_value, "mean": mean, "std": std})
            continue
        fill = fills.get(feat.name)
        summary = moments.with_fill(fill).summary()
        step, center, scale = fit_numeric_step(
            feat.name, feat.scale, {k: v if v is not None else np.nan
                                    for k, v in summary.items()})
        steps.append(step)
        centers.append(center)
        scales.append(scale)
        # Serving fills a missing input with the imputed value, else the train mean.
        serve_fills.append(float(fill) if fill is not None else (summary["mean"] or 0.0))
    return build_pipeline(steps, centers, scales, serve_fills)


__all__ = ["fill_values", "fit_pipeline"]
