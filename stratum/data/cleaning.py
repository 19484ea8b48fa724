"""Cleaning, one batch at a time: type, drop invalid rows, dedupe, count everything.

Invalid rows (a value that is not a number, outside declared bounds, an undeclared
category or class, a missing target) are dropped; rows with a missing value in a column
whose strategy is ``drop`` are dropped; other missing values are imputed later, once the
whole dataset's statistics are known (mean, median, mode or a constant). Every count
lands in the ``CleaningReport`` stored with the version and printed by the CLI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stratum.data.schema import NUMBER_RE, Schema

INT_RE = r"^\s*[-+]?\d+\s*$"


@dataclass
class CleaningReport:
    rows_read: int = 0
    invalid_rows: int = 0
    type_errors: dict[str, int] = field(default_factory=dict)
    out_of_bounds: dict[str, int] = field(default_factory=dict)
    unknown_category: dict[str, int] = field(default_factory=dict)
    missing_target: int = 0
    dropped_missing: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    imputed: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows_kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, other: CleaningReport) -> None:
        """Add the counts of ``other`` (another batch's cleaning) to these."""
        self.rows_read += other.rows_read
        self.invalid_rows += other.invalid_rows
        self.missing_target += other.missing_target
        self.duplicates += other.duplicates
        self.rows_kept += other.rows_kept
        for mine, theirs in ((self.type_errors, other.type_errors),
                             (self.out_of_bounds, other.out_of_bounds),
                             (self.unknown_category, other.unknown_category),
                             (self.dropped_missing, other.dropped_missing)):
            for key, n in theirs.items():
                _add(mine, key, n)

    def lines(self) -> list[str]:
        """Human-readable lines, one per non-zero count."""
        out = [f"rows read: {self.rows_read:,}"]
        for title, counts in (("type errors", self.type_errors),
                              ("out of bounds", self.out_of_bounds),
                              ("unknown category/class", self.unknown_category),
                              ("dropped for a missing value", self.dropped_missing)):
            for col, n in sorted(counts.items()):
                out.append(f"{title} in {col!r}: {n:,} rows")
        if self.missing_target:
            out.append(f"missing target: {self.missing_target:,} rows")
        out.append(f"invalid rows dropped: {self.invalid_rows:,}")
        out.append(f"duplicates removed: {self.duplicates:,}")
        for col, info in sorted(self.imputed.items()):
            out.append(f"imputed {info['count']:,} missing in {col!r} with "
                       f"{info['strategy']} = {info['value']!r}")
        out.append(f"rows kept: {self.rows_kept:,}")
        return out


def _add(counts: dict[str, int], key: str, n: int) -> None:
    if n:
        counts[key] = counts.get(key, 0) + n


def _mask(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def parse_numbers(col: pa.Array, pattern: str = NUMBER_RE) -> tuple[pa.Array, np.ndarray]:
    """Text -> float64; returns the values (bad ones null) and the type-error mask."""
    trimmed = pc.utf8_trim_whitespace(col)
    ok = pc.match_substring_regex(trimmed, pattern)
    errors = _mask(pc.and_(pc.is_valid(col), pc.invert(ok)))
    values = pc.cast(pc.if_else(ok, trimmed, pa.scalar(None, pa.string())), pa.float64())
    return values, errors


def clean_batch(batch: pa.RecordBatch, schema: Schema, target_type: pa.DataType,
                report: CleaningReport) -> pa.RecordBatch:
    """Type the columns for ``schema``; drop and count invalid rows."""
    n = batch.num_rows
    report.rows_read += n
    bad = np.zeros(n, dtype=bool)
    columns: dict[str, pa.Array] = {}
    for feat in schema.features:
        col = batch.column(feat.name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if feat.type == "numeric":
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                col, errors = parse_numbers(col.cast(pa.string()))
                _add(report.type_errors, feat.name, int(errors.sum()))
                bad |= errors
            else:
                col = col.cast(pa.float64())
            # NaN is a missing value, never a number to keep.
            col = pc.if_else(pc.is_nan(col), pa.scalar(None, pa.float64()), col)
            oob = np.zeros(n, dtype=bool)
            if feat.min is not None:
                oob |= _mask(pc.less(col, feat.min))
            if feat.max is not None:
                oob |= _mask(pc.greater(col, feat.max))
            _add(report.out_of_bounds, feat.name, int((oob & ~bad).sum()))
            bad |= oob
        elif feat.type == "categorical":
            col = col.cast(pa.string())
            if feat.categories is not None:
                unknown = _mask(pc.and_(pc.is_valid(col), pc.invert(
                    pc.is_in(col, value_set=pa.array(feat.categories, pa.string())))))
                _add(report.unknown_category, feat.name, int((unknown & ~bad).sum()))
                bad |= unknown
        else:
            if feat.min is not None or feat.max is not None:
                pixels = pc.fill_null(col, pa.scalar([0] * col.type.list_size, col.type))
                x = pixels.flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
                oob = np.zeros(n, dtype=bool)
                if feat.min is not None:
                    oob |= (x < feat.min).any(axis=1)
                if feat.max is not None:
                    oob |= (x > feat.max).any(axis=1)
                _add(report.out_of_bounds, feat.name, int((oob & ~bad).sum()))
                bad |= oob
        columns[feat.name] = col
    target = _typed_target(batch.column(schema.target), target_type, schema, report, bad)
    missing_target = ~_mask(pc.is_valid(target)) & ~bad
    report.missing_target += int(missing_target.sum())
    bad |= missing_target
    if schema.classes is not None:
        unknown = ~_mask(pc.is_in(target, value_set=pa.array(schema.classes, target.type))) & ~bad
        _add(report.unknown_category, schema.target, int(unknown.sum()))
        bad |= unknown
    columns[schema.target] = target
    report.invalid_rows += int(bad.sum())
    for feat in schema.features:
        if feat.strategy == "drop":
            missing = ~_mask(pc.is_valid(columns[feat.name])) & ~bad
            _add(report.dropped_missing, feat.name, int(missing.sum()))
            bad |= missing
    out = pa.record_batch(list(columns.values()), names=list(columns))
    return out.filter(pa.array(~bad)) if bad.any() else out


def _typed_target(col: pa.Array, target_type: pa.DataType, schema: Schema,
                  report: CleaningReport, bad: np.ndarray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.type == target_type:
        return col
    if pa.types.is_string(col.type) and (pa.types.is_integer(target_type)
                                         or pa.types.is_floating(target_type)):
        pattern = INT_RE if pa.types.is_integer(target_type) else NUMBER_RE
        values, errors = parse_numbers(col, pattern)
        _add(report.type_errors, schema.target, int((errors & ~bad).sum()))
        bad |= errors
        return values.cast(target_type)
    return col.cast(target_type)


class Deduper:
    """Remembers row fingerprints across batches in one sorted numpy array.

    Each batch's fingerprints are looked up sorted (binary searches that walk the array
    forward, cache-friendly) and the new ones merged in with one ``np.insert``: a few
    milliseconds per batch where searching unsorted keys in several runs cost ~50 ms.
    """

    def __init__(self) -> None:
        self.seen = np.empty(0, dtype=np.uint64)

    def keep(self, hashes: np.ndarray) -> np.ndarray:
        """Mask of rows whose fingerprint was not seen before (first occurrence wins)."""
        uniq, first = np.unique(hashes, return_index=True)
        idx = np.searchsorted(self.seen, uniq)
        if len(self.seen):
            fresh = self.seen[np.minimum(idx, len(self.seen) - 1)] != uniq
        else:
            fresh = np.ones(len(uniq), dtype=bool)
        keep = np.zeros(len(hashes), dtype=bool)
        keep[first[fresh]] = True
        self.seen = np.insert(self.seen, idx[fresh], uniq[fresh])
        return keep


__all__ = ["CleaningReport", "Deduper", "clean_batch", "parse_numbers"]
