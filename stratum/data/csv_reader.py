"""The CSV (and TSV) reader behind ``stratum.data.sources.open_source``.

CSV is read optimistically with numeric columns typed as float64 (pyarrow's fast path);
when a value fails to convert, the reader raises ``RetryAsText`` and ingest starts over
with every column read as text, so cleaning can drop just the bad rows and count them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from stratum.data.schema import Schema
from stratum.data.tables import SAMPLE_BYTES
from stratum.errors import DataError

_MIN_PIECE_BYTES = 1 << 20  # CSV is parsed in pieces of at least this many bytes


# Control flow between this reader and ingest's retry, not an error a user sees: hence not
# a StratumError, and left out of ``__all__`` (ingest alone catches it).
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
                                                               block_size=SAMPLE_BYTES))
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
        self._bytes_per_row = min(size, SAMPLE_BYTES) / max(batch.num_rows, 1)
        self._sample_types = dict(zip(batch.schema.names, batch.schema.types, strict=True))
        return batch

    def batches(self, schema: Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        block, types = self.plan(schema, batch_rows)
        names: list[str] | None = None
        for piece in self.pieces(block):
            table = self.parse(piece, types, names)
            if names is None:
                names, types = self.header_types(table, types)
            if table.num_rows:
                yield from table.combine_chunks().to_batches()

    def plan(self, schema: Schema, batch_rows: int) -> tuple[int, dict[str, pa.DataType]]:
        """The piece size and the column types the first piece is parsed with (switching
        to text mode when the sample already shows text in a numeric column)."""
        block = int(min(max(batch_rows * self._bytes_per_row, _MIN_PIECE_BYTES), 64 << 20))
        if self.text_mode:
            return block, {c: pa.string() for c in self._sample_types}
        types = {f.name: pa.float64() for f in schema.features if f.type == "numeric"
                 and not pa.types.is_string(self._sample_types.get(f.name, pa.null()))}
        if any(f.type == "numeric" and f.name not in types for f in schema.features):
            self.text_mode = True  # a numeric column already holds text: go tolerant
            return self.plan(schema, batch_rows)
        return block, types

    @staticmethod
    def header_types(first: pa.Table, types: dict[str, pa.DataType]
                     ) -> tuple[list[str], dict[str, pa.DataType]]:
        """Later pieces have no header; they keep the first piece's column types, as one
        streaming reader would (a value that does not fit -> ``RetryAsText``)."""
        names = first.column_names
        return names, {**{n: t for n, t in zip(names, first.schema.types, strict=True)
                          if not pa.types.is_null(t)}, **types}

    def parse(self, piece: bytes, types: dict[str, pa.DataType],
              names: list[str] | None) -> pa.Table:
        """One piece (the first with the header when ``names`` is None); a conversion
        error on the typed path raises ``RetryAsText``, others a ``DataError``."""
        try:
            return self._parse(piece, types, names)
        except (pa.ArrowInvalid, OSError) as exc:
            if not self.text_mode and "conversion error" in str(exc) and (
                    "UTF8" not in str(exc)):
                self.text_mode = True
                raise RetryAsText(str(exc)) from exc
            raise self._error(exc) from exc

    def pieces(self, size: int) -> Iterator[bytes]:
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


__all__ = ["CsvSource"]
