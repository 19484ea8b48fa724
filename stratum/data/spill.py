"""Shard files written once, as R byte-identical replicas, on a background thread.

Ingest's first pass appends each shard's rows here. Every shard has one Parquet writer
whose output goes through a ``_Tee``: the same bytes land in R staged files inside the
artifact store's temp folder and in one sha256, so a replica is never encoded twice,
copied or read back to be checksummed. Publishing is then a rename (local folder) or an
upload (S3) of files that are already complete, durable and hashed.

The work runs on one background thread: Parquet encoding, file writes, hashing and
fdatasync all release the GIL, so they overlap the next batch's cleaning and hashing on
the caller's thread. At most ``depth`` batches wait, which keeps memory bounded.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

_BUFFER = 1 << 20


class _Tee:
    """A write-only file object for pyarrow: every write goes to each file and the hash."""

    def __init__(self, paths: list[Path]) -> None:
        self.files: list[IO[bytes]] = [p.open("wb", buffering=_BUFFER) for p in paths]
        self.hash = hashlib.sha256()
        self.closed = False
        self._pos = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hash.update(view)
        for fh in self.files:
            fh.write(view)
        self._pos += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        for fh in self.files:
            fh.flush()

    def start_writeback(self) -> None:
        """Have the kernel start writing what we wrote to disk without waiting for it
        (Linux starts writeback on DONTNEED), so ``close`` has little left to wait for."""
        for fh in self.files:
            fh.flush()
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        """Flush and fdatasync every file: a staged replica is durable once closed."""
        if not self.closed:
            for fh in self.files:
                fh.flush()
                os.fdatasync(fh.fileno())
            for fh in self.files:
                fh.close()
            self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class ShardFiles:
    """``shards`` Parquet files, each staged as ``replicas`` identical copies in ``folder``.

    ``write(table, bounds)`` queues rows ``bounds[i]:bounds[i+1]`` of ``table`` for shard i;
    ``finish()`` waits, closes every file and returns, per shard, the staged paths and the
    sha256 they share. ``discard()`` removes whatever was staged (on failure, or once
    published files have been moved away).
    """

    def __init__(self, folder: Path, shards: int, replicas: int, *,
                 dictionary: list[str] | None = None, depth: int = 2) -> None:
        self.folder = folder
        self.dictionary = dictionary or False
        self.shards = shards
        self.replicas = replicas
        self.paths: list[list[Path]] = []
        self._writers: dict[int, tuple[pq.ParquetWriter, _Tee]] = {}
        self._schema: pa.Schema | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stratum-shard-writer")
        self._pending: deque[Future[None]] = deque()
        self._depth = depth
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(shards):
            self.paths.append([self._new_path() for _ in range(replicas)])

    def _new_path(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self.folder, prefix=".shard-", suffix=".parquet")
        os.close(fd)
        return Path(name)

    def write(self, table: pa.Table, bounds: list[int]) -> None:
        """Queue one batch, already ordered by shard; blocks while ``depth`` are pending."""
        self._schema = table.schema
        while len(self._pending) >= self._depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, table, bounds))

    def _write(self, table: pa.Table, bounds: list[int]) -> None:
        for i in range(self.shards):
            lo, hi = bounds[i], bounds[i + 1]
            if hi > lo:
                writer, tee = self._writer(i, table.schema)
                writer.write_table(table.slice(lo, hi - lo))
                tee.start_writeback()

    def _writer(self, shard: int, schema: pa.Schema) -> tuple[pq.ParquetWriter, _Tee]:
        if shard not in self._writers:
            tee = _Tee(self.paths[shard])
            self._writers[shard] = (pq.ParquetWriter(tee, schema, **_options(self.dictionary)),
                                    tee)
        return self._writers[shard]

    def finish(self) -> list[tuple[list[Path], str]]:
        """Close every shard (an empty one gets an empty file) → [(paths, sha256)]."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)
        schema = self._schema
        out = []
        for i in range(self.shards):
            if i not in self._writers and schema is not None:
                self._writer(i, schema)
            if i in self._writers:
                writer, tee = self._writers.pop(i)
                writer.close()
                tee.close()
                out.append((self.paths[i], tee.hash.hexdigest()))
        return out

    def discard(self) -> None:
        """Remove staged files still here; safe to call more than once."""
        self._pool.shutdown(wait=True)
        for writer, tee in self._writers.values():
            try:
                writer.close()
            finally:
                tee.close()
        self._writers.clear()
        for paths in self.paths:
            for p in paths:
                p.unlink(missing_ok=True)


def _options(dictionary: list[str] | bool) -> dict[str, Any]:
    # Dictionary encoding only where values repeat (categories, labels, the split): on
    # float columns pyarrow tries a dictionary per row group and, in row groups this
    # small, keeps it — 3.5x slower to write, and larger files.
    return {"use_dictionary": dictionary}


def write_replicas(table: pa.Table, paths: list[Path], dictionary: list[str] | None = None
                   ) -> str:
    """Write ``table`` once as Parquet into every path; returns their shared sha256."""
    tee = _Tee(paths)
    try:
        with pq.ParquetWriter(tee, table.schema, **_options(dictionary or False)) as writer:
            writer.write_table(table)
    finally:
        tee.close()
    return tee.hash.hexdigest()


__all__ = ["ShardFiles", "write_replicas"]
