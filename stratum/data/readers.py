"""Parquet, JSON-lines, NPZ, image-folder and SQL readers behind
``stratum.data.sources.open_source`` (CSV has a module of its own, ``csv_reader``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

from stratum.data.schema import Feature, Schema
from stratum.data.tables import SAMPLE_BYTES, TableSource, image_column
from stratum.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}


class ParquetSource:
    def __init__(self, path: Path) -> None:
        self.path, self.where = path, str(path)
        try:
            self.file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc

    def hints(self) -> Schema | None:
        return None

    def sample(self) -> pa.RecordBatch:
        for batch in self.file.iter_batches(batch_size=1000):
            if batch.num_rows:
                return batch
        raise DataError(f"{self.where}: the dataset is empty (no rows)")

    def batches(self, schema: Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        try:
            yield from self.file.iter_batches(batch_size=batch_rows)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{self.where}: cannot read Parquet data: {exc}") from exc


class JsonlSource:
    def __init__(self, path: Path) -> None:
        self.path, self.where = path, str(path)

    def hints(self) -> Schema | None:
        return None

    def _reader(self, block: int) -> Iterator[pa.RecordBatch]:
        try:
            reader = pajson.open_json(self.path, read_options=pajson.ReadOptions(block_size=block))
            yield from reader
        except (pa.ArrowInvalid, OSError) as exc:
            msg = str(exc).splitlines()[0]
            raise DataError(f"{self.where}: malformed JSON lines: {msg}",
                            hint="one JSON object per line, UTF-8") from exc

    def sample(self) -> pa.RecordBatch:
        for batch in self._reader(SAMPLE_BYTES):
            if batch.num_rows:
                return batch
        raise DataError(f"{self.where}: the dataset is empty (no rows)")

    def batches(self, schema: Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        yield from self._reader(16 << 20)


def NpzSource(path: Path) -> TableSource:
    """Arrays ``X`` (or ``x``/``features``/``data``/``images``) and ``y`` (or ``target``/
    ``labels``/``label``): 2-D ``X`` is tabular, 3-D/4-D ``X`` is images."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable NPZ file ({exc})",
                        hint="save with numpy.savez; object arrays are refused") from exc
    x_key = next((k for k in ("X", "x", "features", "data", "images") if k in arrays), None)
    y_key = next((k for k in ("y", "target", "labels", "label") if k in arrays), None)
    if x_key is None or y_key is None:
        raise DataError(f"{path}: needs arrays X and y, found {sorted(arrays)}")
    x, y = arrays[x_key], arrays[y_key]
    if len(x) != len(y):
        raise DataError(f"{path}: X has {len(x)} rows but y has {len(y)}")
    if len(x) == 0:
        raise DataError(f"{path}: the dataset is empty (no rows)")
    if x.ndim in (3, 4):
        shape = [1, *x.shape[1:]] if x.ndim == 3 else list(x.shape[1:])
        table = pa.table({"image": image_column(x), "target": pa.array(y)})
        feature = Feature(name="image", type="image", shape=[int(s) for s in shape], min=0.0)
        return TableSource(table, str(path), Schema(target="target", features=[feature]))
    if x.ndim != 2:
        raise DataError(f"{path}: X must be 2-D (tabular) or 3-/4-D (images), got {x.shape}")
    names = [str(n) for n in arrays["feature_names"]] if "feature_names" in arrays else [
        f"f{i}" for i in range(x.shape[1])]
    table = pa.table({**{n: pa.array(x[:, i]) for i, n in enumerate(names)},
                      "target": pa.array(y)})
    return TableSource(table, str(path))


class ImageFolderSource:
    """``root/<class>/<image>``; every image must share the first one's size and mode."""

    def __init__(self, root: Path) -> None:
        self.root, self.where = root, str(root)
        self.files = [(p, d.name) for d in sorted(root.iterdir()) if d.is_dir()
                      for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.files:
            raise DataError(f"{root}: no images found",
                            hint="put images in one subfolder per class, e.g. root/cat/1.png")
        first = self._load(self.files[0][0], None)
        self.shape = [int(s) for s in first.shape]

    def _load(self, path: Path, shape: list[int] | None) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                mode = "L" if shape is None and img.mode in ("L", "1", "P", "I;16") else (
                    "L" if shape is not None and shape[0] == 1 else "RGB")
                arr = np.asarray(img.convert(mode))
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{path}: not a readable image ({exc})") from exc
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if shape is not None and list(arr.shape) != shape:
            raise DataError(f"{path}: image is {list(arr.shape)} (C, H, W), the others are "
                            f"{shape}", hint="resize the images to one size")
        return arr

    def hints(self) -> Schema | None:
        feature = Feature(name="image", type="image", shape=self.shape, min=0.0, max=255.0)
        return Schema(target="label", task="classification", features=[feature])

    def sample(self) -> pa.RecordBatch:
        return next(self.batches(self.hints(), 64))  # type: ignore[arg-type]

    def batches(self, schema: Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        step = max(1, min(batch_rows, 4096))
        for i in range(0, len(self.files), step):
            chunk = self.files[i:i + step]
            images = np.stack([self._load(p, self.shape) for p, _ in chunk])
            yield pa.record_batch({"image": image_column(images),
                                   "label": pa.array([c for _, c in chunk])})


class SqlSource:
    """A query on any SQLAlchemy URL, streamed with server-side cursors where supported."""

    def __init__(self, url: str, query: str) -> None:
        from sqlalchemy.engine import make_url

        self.url, self.query = url, query
        try:
            shown = make_url(url).render_as_string(hide_password=True)
        except Exception:
            shown = url.split("@")[-1]
        self.where = f"sql:{shown}"

    def hints(self) -> Schema | None:
        return None

    def _rows(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        from sqlalchemy import create_engine, text
        from sqlalchemy.exc import ArgumentError, SQLAlchemyError

        schema: pa.Schema | None = None
        try:
            engine = create_engine(self.url)
            with engine.connect() as conn:
                result = conn.execution_options(stream_results=True).execute(text(self.query))
                keys = list(result.keys())
                while rows := result.fetchmany(batch_rows):
                    cols = {k: [r[i] for r in rows] for i, k in enumerate(keys)}
                    batch = pa.record_batch(cols) if schema is None else pa.record_batch(
                        cols, schema=schema)
                    schema = schema or batch.schema
                    yield batch
            engine.dispose()
        except (ArgumentError, SQLAlchemyError, ImportError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise DataError(f"{self.where}: SQL query failed: {detail}",
                            hint="check the URL and the query") from exc
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise DataError(f"{self.where}: query returned mixed types in a column: {exc}") from exc

    def sample(self) -> pa.RecordBatch:
        for batch in self._rows(1000):
            return batch
        raise DataError(f"{self.where}: the dataset is empty (the query returned no rows)")

    def batches(self, schema: Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        yield from self._rows(batch_rows)


__all__ = ["IMAGE_SUFFIXES", "ImageFolderSource", "JsonlSource", "NpzSource", "ParquetSource",
           "SqlSource"]
