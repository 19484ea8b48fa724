"""The ``Source`` protocol every reader follows, and the in-memory sources: a
``pyarrow.Table`` sliced into batches (built-in datasets, NPZ arrays), with the helpers
that turn image arrays into such a table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import pyarrow as pa

from stratum.data.schema import Feature, Schema
from stratum.errors import DataError

SAMPLE_BYTES = 1 << 20  # how much of a file a reader parses for ``Source.sample``


class Source(Protocol):
    """A stream of record batches with a name for error messages."""

    where: str

    def hints(self) -> Schema | None:
        """A schema the source knows (built-ins, image folders), else None (infer)."""

    def sample(self) -> pa.RecordBatch:
        """The first rows, to infer a schema from."""

    def batches(self, schema: Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """All rows, as batches typed for ``schema``."""


class TableSource:
    """An in-memory table (built-ins, NPZ arrays) sliced into batches."""

    def __init__(self, table: pa.Table, where: str, schema: Schema | None = None) -> None:
        self.table, self.where, self._schema = table, where, schema

    def hints(self) -> Schema | None:
        return self._schema

    def sample(self) -> pa.RecordBatch:
        return _first_batch(self.table.slice(0, 1000), self.where)

    def batches(self, schema: Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        yield from self.table.to_batches(max_chunksize=batch_rows)


def _first_batch(table: pa.Table, where: str) -> pa.RecordBatch:
    batches = table.to_batches()
    if not batches or table.num_rows == 0:
        raise DataError(f"{where}: the dataset is empty (no rows)")
    return batches[0]


def image_column(images: np.ndarray) -> pa.FixedSizeListArray:
    """``(n, ...)`` pixels -> one fixed-size-list column; uint8 when the values allow it."""
    flat = images.reshape(len(images), -1)
    if flat.size and np.all((flat >= 0) & (flat <= 255)) and np.all(np.mod(flat, 1) == 0):
        flat = flat.astype(np.uint8)
    else:
        flat = flat.astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def image_table(images: np.ndarray, labels: np.ndarray, shape: list[int], where: str,
                max_value: float | None = None) -> TableSource:
    table = pa.table({"image": image_column(images), "label": pa.array(labels)})
    feature = Feature(name="image", type="image", shape=shape, min=0.0, max=max_value)
    return TableSource(table, where, Schema(target="label", task="classification",
                                            features=[feature]))


__all__ = ["SAMPLE_BYTES", "Source", "TableSource", "image_column", "image_table"]
