"""Reading a dataset version back: ``open_dataset(store, "mnist@latest").load("train")``.

A reader hands worker ``k`` of ``W`` the shards ``i`` with ``i % W == k`` (data-parallel
training), and reads each shard from its first replica whose bytes pass their checksum,
falling back to the next replica when a file is missing or corrupt.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from safetensors.numpy import load as st_load

from stratum.data.preprocessing import Pipeline
from stratum.errors import DataError, IntegrityError, NotFoundError
from stratum.store import Store
from stratum.store import models as m

ROW_ID = "__row_id"
SPLIT = "__split"
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
Split = Literal["train", "val", "test"]


def parse_dataset_ref(ref: str) -> tuple[str, str | None]:
    """``"mnist@ab12"`` -> ``("mnist", "ab12")``; ``"mnist"`` -> ``("mnist", None)``."""
    name, _, version = ref.partition("@")
    return name, (version or None)


@dataclass
class Dataset:
    """One dataset version: its metadata row, schema, fitted pipeline and shard readers."""

    name: str
    version: str
    row: m.DatasetVersion
    task: Literal["classification", "regression"]
    classes: list[Any] | None
    feature_names: list[str]
    input_shape: list[int]
    pipeline: Pipeline
    store: Store = field(repr=False)

    @property
    def target(self) -> str:
        return str(self.row.schema["target"])

    @property
    def num_shards(self) -> int:
        return int(self.row.shard_map["shards"])

    def shards_for(self, worker: int = 0, world: int = 1) -> list[int]:
        if world < 1 or not 0 <= worker < world:
            raise DataError(f"worker {worker} is not in a world of {world}")
        return [i for i in range(self.num_shards) if i % world == worker]

    def read_shard(self, shard: int) -> pa.Table:
        """One shard's rows, from the first replica whose checksum verifies."""
        entry = self.row.shard_map["files"][shard]
        errors: list[str] = []
        for path in entry["paths"]:
            try:
                data = self.store.artifacts.get_bytes(path, verify=True)
            except (NotFoundError, IntegrityError) as exc:
                errors.append(str(exc))
                continue
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                errors.append(f"artifact {path} does not match the checksum in the shard map")
                continue
            return pq.read_table(pa.BufferReader(data))
        raise IntegrityError(
            f"dataset {self.name}@{self.version[:12]} shard {shard}: no readable replica: "
            + "; ".join(errors), hint="re-ingest the source to rewrite the shards")

    def load_table(self, split: Split | None = None, *, worker: int = 0,
                   world: int = 1) -> pa.Table:
        """Raw cleaned rows (features, target, row id, split) of this worker's shards."""
        if split is not None and split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {list(SPLITS)}")
        tables = [self.read_shard(i) for i in self.shards_for(worker, world)]
        if not tables:
            return self.read_shard(0).slice(0, 0)
        table = pa.concat_tables(tables)
        if split is not None:
            table = table.filter(pc.equal(table[SPLIT], SPLITS[split]))
        return table

    def load(self, split: Split = "train", *, worker: int = 0,
             world: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed ``X`` (float32, ``(n, *input_shape)``) and ``y`` of one split.

        ``y`` is int64 class indices for classification, float32 for regression.
        """
        table = self.load_table(split, worker=worker, world=world)
        return self.transform_table(table), self.labels(table[self.target])

    def transform_table(self, table: pa.Table) -> np.ndarray:
        columns = {name: column_values(table[name]) for name in self.feature_names}
        return self.pipeline.transform(columns)

    def labels(self, target: pa.ChunkedArray) -> np.ndarray:
        if self.task == "regression":
            return target.to_numpy().astype(np.float32)
        assert self.classes is not None
        index = pc.index_in(target, value_set=pa.array(self.classes, type=target.type))
        if index.null_count:
            raise DataError(f"dataset {self.name}: target has labels outside {self.classes}")
        return index.to_numpy(zero_copy_only=False).astype(np.int64)


def column_values(col: pa.ChunkedArray) -> np.ndarray:
    """A shard column as numpy: images ``(n, size)``, numbers float64 (NaN missing)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_fixed_size_list(col.type):
        size = col.type.list_size
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(col), size)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(col.to_pylist(), dtype=object)


def open_dataset(store: Store, ref: str) -> Dataset:
    """Open ``name``, ``name@latest`` or ``name@<hash-prefix>`` for reading."""
    name, version = parse_dataset_ref(ref)
    row = store.meta.dataset_version(name, version)
    extra = row.extra or {}
    if "pipeline" not in extra:
        raise DataError(f"dataset {name}@{row.version[:12]} has no preprocessing pipeline; "
                        "re-ingest it")
    arrays_path = extra["pipeline_arrays"]
    arrays = st_load(store.artifacts.get_bytes(arrays_path)) if arrays_path else {}
    pipeline = Pipeline.from_artifacts(extra["pipeline"], arrays)
    schema = row.schema
    return Dataset(
        name=name, version=row.version, row=row, task=schema["task"],
        classes=schema.get("classes"), feature_names=pipeline.feature_names,
        input_shape=pipeline.input_shape, pipeline=pipeline, store=store,
    )


def pipeline_blob(config: dict[str, Any]) -> bytes:
    return json.dumps(config, sort_keys=True).encode()


def parquet_bytes(table: pa.Table) -> bytes:
    """Deterministic Parquet bytes for a table: same rows -> same bytes."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy", write_statistics=True)
    return buf.getvalue()


__all__ = ["ROW_ID", "SPLIT", "SPLITS", "Dataset", "open_dataset", "parse_dataset_ref"]
