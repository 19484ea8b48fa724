"""Streaming statistics per column and per split, gathered while ingest writes shards.

Numeric columns keep count, missing, sum, sum of squares, min and max per split; text
columns keep value counts; images keep pixel moments. Imputation is accounted for
analytically (``with_fill``), so the preprocessing pipeline can be fitted on the train
split after imputation without a second pass over the data.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stratum.data.schema import Schema

NSPLITS = 3
TOP_CATEGORIES = 50


@dataclass
class Moments:
    n: int = 0
    missing: int = 0
    total: float = 0.0
    sq: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def add(self, x: np.ndarray, missing: int = 0) -> None:
        self.missing += missing
        if len(x):
            self.n += len(x)
            self.total += float(x.sum(dtype=np.float64))
            self.sq += float(np.square(x, dtype=np.float64).sum())
            self.lo = min(self.lo, float(x.min()))
            self.hi = max(self.hi, float(x.max()))

    def merged(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.missing + other.missing, self.total + other.total,
                       self.sq + other.sq, min(self.lo, other.lo), max(self.hi, other.hi))

    def with_fill(self, value: float | None) -> Moments:
        """These moments after the missing values are replaced by ``value``."""
        if value is None or not self.missing:
            return self
        k = self.missing
        return Moments(self.n + k, 0, self.total + k * value, self.sq + k * value * value,
                       min(self.lo, value), max(self.hi, value))

    def summary(self) -> dict[str, Any]:
        mean = self.total / self.n if self.n else math.nan
        var = max(self.sq / self.n - mean * mean, 0.0) if self.n else math.nan
        return {"count": self.n, "missing": self.missing, "mean": _f(mean),
                "std": _f(math.sqrt(var)), "min": _f(self.lo), "max": _f(self.hi)}


def _f(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 10)


@dataclass
class StatsAccumulator:
    schema: Schema
    numeric: dict[str, list[Moments]] = field(default_factory=dict)
    categories: dict[str, Counter[str]] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    target: Counter[Any] = field(default_factory=Counter)
    target_moments: Moments = field(default_factory=Moments)
    split_rows: list[int] = field(default_factory=lambda: [0] * NSPLITS)

    def add(self, batch: pa.RecordBatch, splits: np.ndarray) -> None:
        masks = [splits == s for s in range(NSPLITS)]
        for s in range(NSPLITS):
            self.split_rows[s] += int(masks[s].sum())
        for feat in self.schema.features:
            col = batch.column(feat.name)
            if feat.type == "numeric":
                x = col.to_numpy(zero_copy_only=False)
                nan = np.isnan(x)
                per = self.numeric.setdefault(feat.name, [Moments() for _ in range(NSPLITS)])
                for s in range(NSPLITS):
                    sel = masks[s] & ~nan
                    per[s].add(x[sel], int((masks[s] & nan).sum()))
            elif feat.type == "categorical":
                counts = self.categories.setdefault(feat.name, Counter())
                vc = pc.value_counts(pc.drop_null(col))
                counts.update(dict(zip(vc.field("values").to_pylist(),
                                       vc.field("counts").to_pylist(), strict=True)))
                self.missing[feat.name] = self.missing.get(feat.name, 0) + col.null_count
            else:
                x = col.flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
                per = self.numeric.setdefault(feat.name, [Moments() for _ in range(NSPLITS)])
                for s in range(NSPLITS):
                    per[s].add(x[masks[s]].reshape(-1).astype(np.float64))
        target = batch.column(self.schema.target)
        if self.schema.task == "classification":
            vc = pc.value_counts(target)
            self.target.update(dict(zip(vc.field("values").to_pylist(),
                                        vc.field("counts").to_pylist(), strict=True)))
        else:
            self.target_moments.add(target.cast(pa.float64()).to_numpy(zero_copy_only=False))

    def total_missing(self, name: str) -> int:
        if name in self.numeric:
            return sum(m.missing for m in self.numeric[name])
        return self.missing.get(name, 0)

    def overall(self, name: str) -> Moments:
        per = self.numeric[name]
        return per[0].merged(per[1]).merged(per[2])

    def mode(self, name: str) -> str | None:
        counts = self.categories.get(name)
        return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counts else None

    def report(self, fills: dict[str, Any]) -> dict[str, Any]:
        """The statistics document stored with the version (after imputation)."""
        features: dict[str, Any] = {}
        for feat in self.schema.features:
            if feat.type == "categorical":
                counts = self.categories.get(feat.name, Counter())
                top = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CATEGORIES])
                features[feat.name] = {"type": "categorical", "distinct": len(counts),
                                       "missing": self.missing.get(feat.name, 0), "top": top}
            else:
                fill = fills.get(feat.name)
                stats = self.overall(feat.name).summary()
                if feat.type == "numeric" and isinstance(fill, float):
                    stats = {**self.overall(feat.name).with_fill(fill).summary(),
                             "missing": stats["missing"]}
                features[feat.name] = {"type": feat.type, **stats}
        names = ("train", "val", "test")
        out: dict[str, Any] = {"rows": sum(self.split_rows),
                               "splits": dict(zip(names, self.split_rows, strict=True)),
                               "features": features}
        if self.schema.task == "classification":
            out["target"] = {"classes": {str(k): v for k, v in sorted(
                self.target.items(), key=lambda kv: str(kv[0]))}}
        else:
            out["target"] = self.target_moments.summary()
        return out


__all__ = ["Moments", "StatsAccumulator"]
