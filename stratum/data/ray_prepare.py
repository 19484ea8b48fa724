"""Preparing an ingest's batches on a Ray cluster with Ray Data (``data ingest --backend
ray``): the ``Preparer`` for ``cluster.backend: ray``.

This process (the driver) cuts the source into units exactly where a local ingest cuts it
into batches: a CSV file into the same line-aligned pieces of raw bytes (only the first is
parsed here, for the header and the column types every later piece is parsed with, as a
local read does); any other source into the batches it yields, as Arrow IPC. A window of
units at a time becomes a Ray Data dataset whose ``map_batches`` tasks, spread over the
nodes, parse, type, clean and fingerprint each unit and send back its rows and cleaning
counts. The next window runs on the cluster while ingest folds the current one (dedupe,
ids, splits, statistics, shard files) in the source's order, so the version is the one a
local ingest makes, shard files included, byte for byte.

The nodes never open the source or the stores: this process reads the file and writes
the shards, and units travel through Ray's object store. So a file of this machine can
be ingested on a cluster of several machines, and the store may be local.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from stratum.data.cleaning import CleaningReport
from stratum.data.csv_reader import CsvSource, RetryAsText
from stratum.data.prefetch import prefetch
from stratum.data.prepare import Prepared, prepare_batch
from stratum.data.schema import Schema
from stratum.data.tables import Source
from stratum.errors import ClusterError, DataError

if TYPE_CHECKING:
    from stratum.config import Settings

HASH_COLUMN = "__row_hash"


class RayPreparer:
    """Parses, cleans and fingerprints the source's batches on the Ray cluster of
    ``settings`` (``cluster.address``, else this home's local cluster)."""

    name = "ray"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nodes: set[str] = set()  # the node addresses that prepared units
        self._csv: dict[str, Any] = {}

    def prepare(self, src: Source, schema: Schema, target_type: pa.DataType,
                batch_rows: int, report: CleaningReport) -> Iterator[Prepared]:
        from stratum.cluster import connect_settings

        live = connect_settings(self.settings)  # a ClusterError when nothing answers
        window = max(2, 2 * int(sum(n.cpus for n in live)))
        for results in prefetch(self._windows(src, schema, target_type, batch_rows, window),
                                depth=1):
            for result in results:
                counts = CleaningReport(**json.loads(result["report"]))
                report.add(counts)
                yield from _unpack(result["data"], counts.rows_read)

    def _windows(self, src: Source, schema: Schema, target_type: pa.DataType,
                 batch_rows: int, size: int) -> Iterator[list[dict[str, Any]]]:
        units: list[dict[str, Any]] = []
        for unit in self._units(src, schema, batch_rows):
            units.append({"unit": len(units), **unit})
            if len(units) == size:
                yield self._run(src, schema, target_type, units)
                units = []
        if units:
            yield self._run(src, schema, target_type, units)

    def _units(self, src: Source, schema: Schema, batch_rows: int
               ) -> Iterator[dict[str, Any]]:
        if not isinstance(src, CsvSource):
            for raw in src.batches(schema, batch_rows):
                yield {"kind": "arrow", "data": _ipc([raw])}
            return
        block, types = src.plan(schema, batch_rows)
        self._csv = {"where": src.where, "text_mode": src.text_mode, "names": None,
                     "types": types}
        for piece in src.pieces(block):
            if self._csv["names"] is not None:
                yield {"kind": "csv", "data": piece}
                continue
            # The first piece sets the column names and types of the rest: parsed here.
            table = src.parse(piece, types, None)
            names, later = src.header_types(table, types)
            self._csv.update(names=names, types=later)
            if table.num_rows:
                yield {"kind": "arrow", "data": _ipc(table.combine_chunks().to_batches())}

    def _run(self, src: Source, schema: Schema, target_type: pa.DataType,
             units: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import ray.data

        # Ray Data narrates each execution on stderr; the CLI prints its own progress.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        kwargs = {"schema_json": schema.model_dump_json(), "target_type": target_type,
                  "csv": self._csv}
        try:
            ds = ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
                partial(prepare_units, **kwargs), batch_size=1, batch_format="pyarrow",
                num_cpus=1)
            results = sorted(ds.take_all(), key=lambda r: r["unit"])
        except Exception as exc:  # Ray's own errors: a task or node lost for good
            raise ClusterError(f"preparing {src.where} on the Ray cluster failed: "
                               f"{str(exc).splitlines()[0]}",
                               hint="check the cluster (`stratum cluster status`), or "
                                    "ingest with --backend local") from exc
        for result in results:
            self.nodes.add(result["node"])
            if result["status"] == "retry":
                # As a local read: a number column held text; ingest reads again as text.
                if isinstance(src, CsvSource):
                    src.text_mode = True
                raise RetryAsText(result["message"])
            if result["status"] == "error":
                raise self._error(src, units[result["unit"]], result["message"])
        return results

    def _error(self, src: Source, unit: dict[str, Any], message: str) -> Exception:
        """The error a local read raises for this piece (it names the file's line, which
        only this machine can read), else the worker's message."""
        if isinstance(src, CsvSource) and unit["kind"] == "csv":
            try:
                src.parse(unit["data"], self._csv["types"], self._csv["names"])
            except DataError as exc:
                return exc
        return DataError(f"{src.where}: {message}")


def prepare_units(table: pa.Table, *, schema_json: str, target_type: pa.DataType,
                  csv: dict[str, Any]) -> pa.Table:
    """What each Ray Data task runs: every unit of ``table`` parsed (CSV pieces), cleaned
    and fingerprinted; one row per unit with its rows (IPC) and cleaning counts."""
    import ray

    schema = Schema.model_validate_json(schema_json)
    out: dict[str, list[Any]] = {k: [] for k in ("unit", "status", "message", "data",
                                                 "report", "node")}
    node = ray.util.get_node_ip_address()
    for unit, kind, data in zip(table.column("unit").to_pylist(),
                                table.column("kind").to_pylist(),
                                table.column("data").to_pylist(), strict=True):
        status, message, packed, report = "ok", "", b"", CleaningReport()
        try:
            batches = _parse_csv(data, csv) if kind == "csv" else _batches(data)
            packed = _ipc([_with_hashes(prepare_batch(b, schema, target_type, report))
                           for b in batches])
        except RetryAsText as exc:
            status, message = "retry", str(exc)
        except Exception as exc:  # the driver reads the piece again for the exact error
            status, message = "error", str(exc).splitlines()[0] if str(exc) else repr(exc)
        for key, value in (("unit", unit), ("status", status), ("message", message),
                           ("data", packed), ("report", json.dumps(report.to_dict())),
                           ("node", node)):
            out[key].append(value)
    return pa.table({**out, "data": pa.array(out["data"], pa.binary())})


def _parse_csv(piece: bytes, csv: dict[str, Any]) -> list[pa.RecordBatch]:
    src = CsvSource(Path(csv["where"]))
    src.text_mode = csv["text_mode"]
    table = src.parse(piece, csv["types"], csv["names"])
    return table.combine_chunks().to_batches() if table.num_rows else []


def _with_hashes(part: Prepared) -> pa.RecordBatch:
    return part.batch.append_column(HASH_COLUMN, pa.array(part.hashes, pa.uint64()))


def _ipc(batches: list[pa.RecordBatch]) -> bytes:
    if not batches:
        return b""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batches[0].schema) as writer:
        for b in batches:
            writer.write_batch(b)
    return bytes(sink.getvalue().to_pybytes())


def _batches(data: bytes) -> list[pa.RecordBatch]:
    return list(pa.ipc.open_stream(data)) if data else []


def _unpack(data: bytes, rows_read: int) -> Iterator[Prepared]:
    """A unit's prepared batches; its rows read are counted with the first."""
    for i, batch in enumerate(_batches(data)):
        hashes = batch.column(HASH_COLUMN).to_numpy().astype(np.uint64, copy=False)
        yield Prepared(batch.drop_columns([HASH_COLUMN]), hashes, rows_read if i == 0 else 0)


__all__ = ["RayPreparer", "prepare_units"]
