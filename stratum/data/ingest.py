"""``ingest(source, name, store)``: stream, clean, split, shard and version a dataset.

Two passes, memory bounded by a few batches (pass 1) and one shard (pass 2):

1. Stream batches from the source, each typed, cleaned and fingerprinted by a
   ``Preparer`` (here, or on a Ray cluster's nodes: ``prepare.py``); in the source's
   order, drop duplicates by row fingerprint; give each kept row an id, a split and a
   shard (``hash(key) % N``); hand it to ``ShardFiles``, which writes each shard once
   as R byte-identical replica files staged in the artifact store (hashed and made
   durable as they are written, on a background thread) while statistics accumulate.
2. The version is a content hash of the layout, the schema, the imputation values and
   every kept row's fingerprint. If it exists, nothing is published (same data, same
   version). Otherwise a shard with missing values is rewritten with them imputed, each
   staged replica is published under the version's path with its checksum, and only
   then is the version row recorded with its schema, statistics, cleaning report, shard
   map and fitted preprocessing pipeline.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from safetensors.numpy import save as st_save

from stratum.data.cleaning import CleaningReport, Deduper
from stratum.data.csv_reader import RetryAsText
from stratum.data.dataset import ROW_ID, SPLIT
from stratum.data.fitting import fill_values, fit_pipeline
from stratum.data.prepare import LocalPreparer, Preparer
from stratum.data.schema import Schema, infer_schema, infer_task
from stratum.data.sharding import shard_of
from stratum.data.sources import open_source
from stratum.data.spill import ShardFiles, write_replicas
from stratum.data.split import Splitter
from stratum.data.stats import StatsAccumulator
from stratum.data.tables import Source
from stratum.errors import DataError, NotFoundError
from stratum.security.names import validate_name
from stratum.store import Store
from stratum.store import models as m

FORMAT = 1
HASH_NAME = "splitmix64"


@dataclass
class IngestResult:
    version: m.DatasetVersion
    created: bool
    report: CleaningReport


@dataclass
class _Pass:
    """What pass 1 leaves behind."""

    report: CleaningReport
    stats: StatsAccumulator
    fingerprint: bytes
    shard_rows: np.ndarray
    staged: list[tuple[list[Path], str]]  # per shard: replica files, their sha256
    rows: int


def ingest(source: str, name: str, store: Store, *, shards: int = 8, replicas: int = 2,
           shard_key: str | None = None, schema: Schema | None = None,
           progress: Callable[[int], None] | None = None,
           batch_rows: int = 65_536, preparer: Preparer | None = None) -> IngestResult:
    """Ingest ``source`` as dataset ``name``; ``progress`` gets each batch's row count.
    ``preparer`` reads and cleans the batches (``preparer_for``: in this process, or on a
    Ray cluster); the version is the same either way.

    >>> # ingest("builtin:iris", "iris", store).version.version[:12]  # doctest: +SKIP
    """
    validate_name(name, "dataset name")
    preparer = preparer or LocalPreparer()
    if shards < 1 or replicas < 1:
        raise DataError(f"shards ({shards}) and replicas ({replicas}) must be at least 1")
    src = open_source(source)
    resolved, target_type = resolve_schema(src, schema)
    if shard_key is not None and shard_key not in [resolved.target, *resolved.feature_names]:
        raise DataError(f"shard key {shard_key!r} is not a column of {src.where}",
                        hint=f"choose one of {[resolved.target, *resolved.feature_names]}")
    new_files = partial(ShardFiles, store.artifacts.staging_dir(), shards, replicas,
                        dictionary=_repeating_columns(resolved))
    files = new_files()
    try:
        try:
            done = _pass_one(src, resolved, target_type, shard_key, files, batch_rows,
                             progress, preparer)
        except RetryAsText:
            # A number column held text: read again as text so cleaning counts bad rows.
            files.discard()
            files = new_files()
            done = _pass_one(src, resolved, target_type, shard_key, files, batch_rows,
                             progress, preparer)
        if done.rows == 0:
            raise DataError(f"{src.where}: the dataset is empty after cleaning ("
                            + "; ".join(done.report.lines()) + ")")
        if resolved.task == "classification":
            classes = resolved.classes or sorted(done.stats.target, key=_class_order)
            resolved = resolved.model_copy(update={"classes": classes})
        fills = fill_values(resolved, done.stats, [p[0] for p, _ in done.staged],
                            done.report)
        schema_doc = {**resolved.model_dump(mode="json"), "target_type": str(target_type)}
        layout = {"shards": shards, "replicas": replicas, "shard_key": shard_key,
                  "hash": HASH_NAME}
        version = _version_hash(schema_doc, layout, fills, done.fingerprint)
        try:
            existing = store.meta.dataset_version(name, version)
            return IngestResult(existing, False, done.report)
        except NotFoundError:
            pass
        row = _publish(store, name, version, src.where, resolved, schema_doc, layout,
                       fills, done)
        return IngestResult(row, True, done.report)
    finally:
        files.discard()  # published files were moved away; this removes the rest


def resolve_schema(src: Source, declared: Schema | None) -> tuple[Schema, pa.DataType]:
    """The schema to ingest with (declared, else the source's, else inferred) and the
    target's Arrow type."""
    sample = src.sample()
    schema = infer_schema(sample, src.where, hints=declared or src.hints())
    target = sample.column(schema.target)
    target_type = target.type
    if schema.task is None:
        schema = schema.model_copy(update={"task": infer_task(target)})
    if pa.types.is_null(target_type):
        raise DataError(f"{src.where}: target column {schema.target!r} has no values")
    numeric = pa.types.is_integer(target_type) or pa.types.is_floating(target_type)
    if schema.task == "regression" and not numeric and not pa.types.is_string(target_type):
        raise DataError(f"{src.where}: regression target {schema.target!r} must be numeric")
    if schema.task == "regression" or pa.types.is_floating(target_type):
        target_type = pa.float64()
    if pa.types.is_large_string(target_type) or pa.types.is_dictionary(target_type):
        target_type = pa.string()
    return schema, target_type


def _repeating_columns(schema: Schema) -> list[str]:
    """Columns whose values repeat: Parquet dictionary-encodes these and only these."""
    cols = [f.name for f in schema.features if f.type == "categorical"]
    if schema.task == "classification":
        cols.append(schema.target)
    return [*cols, SPLIT]


def _class_order(label: Any) -> tuple[int, Any]:
    return (0, label) if isinstance(label, int | float) else (1, str(label))


def _pass_one(src: Source, schema: Schema, target_type: pa.DataType,
              shard_key: str | None, files: ShardFiles, batch_rows: int,
              progress: Callable[[int], None] | None, preparer: Preparer) -> _Pass:
    report, dedupe = CleaningReport(), Deduper()
    splitter = Splitter(schema.val_fraction, schema.test_fraction)
    stats = StatsAccumulator(schema)
    fingerprint = hashlib.blake2b(digest_size=32)
    shards = files.shards
    shard_rows = np.zeros(shards, dtype=np.int64)
    next_id = 0
    for part in preparer.prepare(src, schema, target_type, batch_rows, report):
        if progress is not None:
            progress(part.rows_read)
        batch, hashes = part.batch, part.hashes
        if batch.num_rows == 0:
            continue
        if schema.dedupe:
            keep = dedupe.keep(hashes)
            report.duplicates += int((~keep).sum())
            if not keep.all():
                batch, hashes = batch.filter(pa.array(keep)), hashes[keep]
        n = batch.num_rows
        if n == 0:
            continue
        ids = np.arange(next_id, next_id + n, dtype=np.int64)
        next_id += n
        fingerprint.update(hashes.tobytes())
        target = batch.column(schema.target)
        groups = target.to_numpy(zero_copy_only=False) if (
            schema.task == "classification") else None
        splits = splitter.assign(groups, n)
        stats.add(batch, splits)
        keys = ids if shard_key is None else batch.column(shard_key)
        shard = shard_of(keys, shards)
        full = batch.append_column(ROW_ID, pa.array(ids)).append_column(
            SPLIT, pa.array(splits, pa.int8()))
        order = np.argsort(shard, kind="stable")
        counts = np.bincount(shard, minlength=shards)
        shard_rows += counts
        files.write(pa.Table.from_batches([full.take(pa.array(order))]),
                    [0, *np.cumsum(counts).tolist()])
    staged = files.finish()
    report.rows_kept = next_id
    return _Pass(report, stats, fingerprint.digest(), shard_rows, staged, next_id)


def _version_hash(schema_doc: dict[str, Any], layout: dict[str, Any], fills: dict[str, Any],
                  fingerprint: bytes) -> str:
    head = json.dumps({"format": FORMAT, "schema": schema_doc, "layout": layout,
                       "fills": fills}, sort_keys=True, default=str).encode()
    return hashlib.blake2b(head + fingerprint, digest_size=16).hexdigest()


def _publish(store: Store, name: str, version: str, where: str, schema: Schema,
             schema_doc: dict[str, Any], layout: dict[str, Any], fills: dict[str, Any],
             done: _Pass) -> m.DatasetVersion:
    base = f"datasets/{name}/{version}"
    written: list[str] = []
    try:
        files = []
        for i, (staged, digest) in enumerate(done.staged):
            digest = _impute(staged, digest, fills, _repeating_columns(schema))
            size = staged[0].stat().st_size
            paths = [f"{base}/shard-{i:05d}-r{r}.parquet" for r in range(len(staged))]
            for path, local in zip(paths, staged, strict=True):
                written.append(path)
                store.artifacts.put_file(path, local, digest=digest)
            files.append({"shard": i, "rows": int(done.shard_rows[i]), "sha256": digest,
                          "bytes": size, "paths": paths})
        pipeline = fit_pipeline(schema, done.stats, fills)
        config, arrays = pipeline.to_artifacts()
        arrays_path = f"{base}/preprocessing.safetensors"
        written.append(arrays_path)
        digest = store.artifacts.put_bytes(arrays_path, st_save(arrays))
        extra = {"format": FORMAT, "pipeline": config, "pipeline_arrays": arrays_path,
                 "pipeline_sha256": digest, "feature_names": pipeline.feature_names,
                 "input_shape": pipeline.input_shape, "task": schema.task,
                 "classes": schema.classes}
        row, _ = store.meta.add_dataset_version(
            name, version, source=where, num_rows=done.rows, schema=schema_doc,
            stats=done.stats.report(fills), cleaning=done.report.to_dict(),
            shard_map={**layout, "files": files}, extra=extra,
        )
        return row
    except BaseException:
        for path in written:  # no version row was recorded: leave nothing half-made
            try:
                store.artifacts.delete(path)
            except Exception:
                pass
        raise


def _impute(staged: list[Path], digest: str, fills: dict[str, Any],
            dictionary: list[str]) -> str:
    """Fill the shard's missing values in place (every replica); returns its sha256."""
    if not fills:
        return digest
    table = pq.read_table(staged[0])
    changed = False
    for col, value in fills.items():
        idx = table.schema.get_field_index(col)
        if table.column(idx).null_count:
            table = table.set_column(idx, col, pc.fill_null(table.column(idx), value))
            changed = True
    return write_replicas(table, staged, dictionary) if changed else digest


__all__ = ["IngestResult", "ingest", "resolve_schema"]
