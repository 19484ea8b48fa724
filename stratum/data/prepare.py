"""Turning a source into typed, cleaned, fingerprinted batches: the part of ingest that
parallelises, behind one seam (``Preparer``) with a local and a Ray implementation
(``preparers.preparer_for`` picks one).

Each batch is prepared on its own (parse, type, drop and count invalid rows, hash each row
over the schema's columns): nothing in it depends on other batches. What does (dedupe by
fingerprint, row ids, the split, statistics, shard files) stays in ingest's one ordered
fold over the prepared batches, so both preparers give the same version, byte for byte,
as long as they yield the same batches in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa

from stratum.data.cleaning import CleaningReport, clean_batch
from stratum.data.prefetch import prefetch
from stratum.data.schema import Schema
from stratum.data.sharding import row_hashes
from stratum.data.tables import Source


@dataclass
class Prepared:
    batch: pa.RecordBatch  # typed for the schema, invalid rows dropped
    hashes: np.ndarray  # each row's fingerprint (uint64) over the features and target
    rows_read: int  # rows of the source this batch came from, before cleaning


class Preparer(Protocol):
    """Yields the source's batches prepared, in the source's order; adds every cleaning
    count to ``report``. May raise ``RetryAsText`` (a CSV number column held text)."""

    name: str

    def prepare(self, src: Source, schema: Schema, target_type: pa.DataType,
                batch_rows: int, report: CleaningReport) -> Iterator[Prepared]: ...


def prepare_batch(raw: pa.RecordBatch, schema: Schema, target_type: pa.DataType,
                  report: CleaningReport) -> Prepared:
    """One batch: clean it (counts into ``report``) and fingerprint its rows."""
    batch = clean_batch(raw, schema, target_type, report)
    return Prepared(batch, row_hashes(batch, [*schema.feature_names, schema.target]),
                    raw.num_rows)


class LocalPreparer:
    """In this process, reading ahead on a background thread."""

    name = "local"

    def prepare(self, src: Source, schema: Schema, target_type: pa.DataType,
                batch_rows: int, report: CleaningReport) -> Iterator[Prepared]:
        for raw in prefetch(src.batches(schema, batch_rows)):
            yield prepare_batch(raw, schema, target_type, report)


__all__ = ["LocalPreparer", "Prepared", "Preparer", "prepare_batch"]
