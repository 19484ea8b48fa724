"""File, folder and SQL readers behind ``stratum.data.sources.open_source``.

CSV is read optimistically with numeric columns typed as float64 (pyarrow's fast path);
when a value fails to convert, the reader raises ``RetryAsText`` and ingest starts over
with every column read as text, so cleaning can drop just the bad rows and count them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from stratum.data.schema import Feature, Schema
from stratum.data.sources import IMAGE_SUFFIXES, TableSource, image_column, square_side
from stratum.errors import DataError

_SAMPLE_BYTES = 1 << 20
_MIN_PIECE_BYTES = 1 << 20  # CSV is parsed in pieces of at least this many bytes


class RetryAsText(Exception):
    """The typed fast path met a value it cannot convert; read again as text."""


class CsvSource:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self.delimiter = "\t" if ".tsv" in path.name.lower() else ","
        self.text_mode = False
        self._bytes_per_row = 100.0

    def hints(self) -> Schema | None:
        return None

    def _options(self, types: dict[str, pa.DataType], *, names: list[str] | None = None,
                 threads: bool = True, block_size: int | None = None) -> dict[str, Any]:
        """pyarrow CSV options; rows with the wrong column count are kept in ``_bad`` so
        the error can name the line."""
        bad: list[Any] = []

        def on_invalid(row: Any) -> str:
            bad.append(row)
            return "error"

        self._bad = bad
        sizing = {"block_size": block_size} if block_size else {}
        return {
            "read_options": pacsv.ReadOptions(column_names=names, use_threads=threads,
                                              **sizing),
            "parse_options": pacsv.ParseOptions(delimiter=self.delimiter,
                                                invalid_row_handler=on_invalid),
            "convert_options": pacsv.ConvertOptions(column_types=types,
                                                    strings_can_be_null=True),
        }

    def _error(self, exc: Exception) -> DataError:
        msg = str(exc).splitlines()[0]
        if "UTF8" in msg or "UTF-8" in msg:
            return DataError(f"{self.where}{self._bad_utf8_row()}: not valid UTF-8 text ({msg})",
                             hint="re-save the file as UTF-8")
        if self._bad:
            row = self._bad[0]
            number = self._line_of(row.text)
            return DataError(f"{self.where}{number}: malformed CSV: expected "
                             f"{row.expected_columns} columns, got {row.actual_columns}: "
                             f"{row.text[:80]!r}")
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException):
            return DataError(f"{self.where}: cannot read the file: {exc}")
        return DataError(f"{self.where}: malformed CSV: {msg}")

    def _bad_utf8_row(self) -> str:
        # Error path only: pyarrow does not say where, so find the line ourselves.
        with self.path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    return f" line {number}"
        return ""

    def _line_of(self, text: str) -> str:
        with self.path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                if line.rstrip(b"\r\n").decode("utf-8", "replace") == text:
                    return f" line {number}"
        return ""

    def sample(self) -> pa.RecordBatch:
        # No reader threads for the sample: a read-ahead still running when an error ends
        # the process can abort the interpreter at exit.
        try:
            reader = pacsv.open_csv(self.path, **self._options({}, threads=False,
                                                               block_size=_SAMPLE_BYTES))
        except (pa.ArrowInvalid, OSError) as exc:  # open_csv parses the first block
            raise self._error(exc) from exc
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            raise DataError(f"{self.where}: the dataset is empty (no data rows)") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise self._error(exc) from exc
        finally:
            reader.close()
        for name, field in zip(batch.schema.names, batch.schema, strict=True):
            if pa.types.is_binary(field.type):
                raise DataError(f"{self.where}{self._bad_utf8_row()}: column {name!r} is not "
                                "valid UTF-8 text", hint="re-save the file as UTF-8")
            if pa.types.is_null(field.type) and batch.num_rows == 0:
                raise DataError(f"{self.where}: the dataset is empty (no data rows)")
        size = self.path.stat().st_size
        self._bytes_per_row = min(size, _SAMPLE_BYTES) / max(batch.num_rows, 1)
        self._sample_types = dict(zip(batch.schema.names, batch.schema.types, strict=True))
        return batch

    def batches(self, schema: Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        block = int(min(max(batch_rows * self._bytes_per_row, _MIN_PIECE_BYTES), 64 << 20))
        if self.text_mode:
            types: dict[str, pa.DataType] = {c: pa.string() for c in self._sample_types}
        else:
            types = {f.name: pa.float64() for f in schema.features if f.type == "numeric"
                     and not pa.types.is_string(self._sample_types.get(f.name, pa.null()))}
            if any(f.type == "numeric" and f.name not in types for f in schema.features):
                self.text_mode = True  # a numeric column already holds text: go tolerant
                yield from self.batches(schema, batch_rows)
                return
        names: list[str] | None = None
        for piece in self._pieces(block):
            try:
                table = self._parse(piece, types, names)
            except (pa.ArrowInvalid, OSError) as exc:
                if not self.text_mode and "conversion error" in str(exc) and (
                        "UTF8" not in str(exc)):
                    self.text_mode = True
                    raise RetryAsText(str(exc)) from exc
                raise self._error(exc) from exc
            if names is None:
                # Later pieces have no header; they keep the first piece's column types,
                # as one streaming reader would (a value that does not fit → RetryAsText).
                names = table.column_names
                types = {**{n: t for n, t in zip(names, table.schema.types, strict=True)
                            if not pa.types.is_null(t)}, **types}
            if table.num_rows:
                yield from table.combine_chunks().to_batches()

    def _pieces(self, size: int) -> Iterator[bytes]:
        """The file in pieces of about ``size`` bytes, each ending at a line end; the first
        holds the header. Values cannot span lines (pyarrow's default, which we keep)."""
        with self.path.open("rb") as fh:
            rest = b""
            while data := fh.read(size):
                cut = data.rfind(b"\n") + 1
                if not cut:
                    rest += data
                    continue
                yield rest + data[:cut]
                rest = data[cut:]
            if rest:
                yield rest

    def _parse(self, piece: bytes, types: dict[str, pa.DataType],
               names: list[str] | None) -> pa.Table:
        """One piece with pyarrow's multi-threaded ``read_csv``: a streaming reader parses
        one block at a time and runs at half its speed."""
        return pacsv.read_csv(pa.BufferReader(piece), **self._options(types, names=names))


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
        for batch in self._reader(_SAMPLE_BYTES):
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


def prefetch(batches: Iterator[pa.RecordBatch], depth: int = 2) -> Iterator[pa.RecordBatch]:
    """Read the next ``depth`` batches in a background thread while the caller works on
    the current one: Arrow's readers release the GIL, so reading overlaps cleaning and
    shard writing. Exceptions reach the caller where the plain iterator would raise them."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(("batch", b), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", None))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(("error", exc))

    t = threading.Thread(target=work, name="prefetch", daemon=True)
    t.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()  # the consumer stopped early (an error, or it broke off): end the thread
        while t.is_alive():  # it may be blocked handing over one last item
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass


__all__ = ["CsvSource", "ImageFolderSource", "JsonlSource", "NpzSource", "ParquetSource",
           "RetryAsText", "SqlSource", "prefetch", "square_side"]
