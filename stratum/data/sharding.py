"""Stable, vectorised hashing: shard assignment and row fingerprints.

The hash must never change between runs, machines or library versions (a row's shard
and a version's content hash depend on it), so it is plain 64-bit arithmetic in numpy:

- integers: the splitmix64 finaliser of the value;
- floats: splitmix64 of the IEEE-754 bits (missing values hash as one constant);
- text/bytes: a polynomial hash of the UTF-8 bytes (mod 2**64), then splitmix64.

A row goes to shard ``hash(shard_key) % N``; the default key is the row id.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_POLY = np.uint64(0x100000001B3)
_NULL = np.uint64(0x5BD1E9955BD1E995)
_POWERS: np.ndarray = np.ones(1, dtype=np.uint64)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective, well-mixed map of uint64 -> uint64."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64, copy=True)
        z += _GOLDEN
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def _powers(n: int) -> np.ndarray:
    global _POWERS
    if len(_POWERS) < n:
        size = max(n, 2 * len(_POWERS))
        with np.errstate(over="ignore"):
            p = np.full(size, _POLY, dtype=np.uint64)
            p[0] = 1
            _POWERS = np.multiply.accumulate(p, dtype=np.uint64)
    return _POWERS[:n]


def hash_bytes(arr: pa.Array) -> np.ndarray:
    """Hash each string/binary value; vectorised over the Arrow buffers."""
    arr = arr.cast(pa.large_binary()) if not pa.types.is_large_binary(arr.type) else arr
    n = len(arr)
    nulls = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
    arr = pc.fill_null(arr, b"") if arr.null_count else arr
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64)[arr.offset:arr.offset + n + 1]
    start = int(offsets[0])
    lens = np.diff(offsets)
    total = int(offsets[-1]) - start
    out = np.zeros(n, dtype=np.uint64)
    if total:
        data = np.frombuffer(data_buf, dtype=np.uint8)[start:start + total].astype(np.uint64)
        firsts = offsets[:-1] - start
        pos = np.arange(total, dtype=np.int64) - np.repeat(firsts, lens)
        with np.errstate(over="ignore"):
            contrib = (data + np.uint64(1)) * _powers(int(lens.max()))[pos]
        nonempty = lens > 0
        out[nonempty] = np.add.reduceat(contrib, firsts[nonempty])
    with np.errstate(over="ignore"):
        out ^= lens.astype(np.uint64) * _M2
    h = splitmix64(out)
    if nulls is not None:
        h[nulls] = _NULL
    return h


def hash_array(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A stable uint64 hash of every value of a column (see the module docstring)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        vals = pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        h = splitmix64(vals.view(np.uint64))
    elif pa.types.is_floating(t):
        vals = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
        vals = np.where(np.isnan(vals), 0.0, vals) + 0.0  # -0.0 and +0.0 hash alike
        h = splitmix64(vals.view(np.uint64))
    elif pa.types.is_fixed_size_list(t):
        return hash_matrix(arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), -1))
    else:
        return hash_bytes(arr.cast(pa.large_string()) if pa.types.is_string(t) else arr)
    if arr.null_count:
        h[arr.is_null().to_numpy(zero_copy_only=False)] = _NULL
    return h


def hash_matrix(x: np.ndarray) -> np.ndarray:
    """Hash each row of a 2-D numeric array (an image) through its raw bytes."""
    x = np.ascontiguousarray(x)
    raw = x.view(np.uint8).reshape(len(x), -1)
    pad = (-raw.shape[1]) % 8
    if pad:
        raw = np.concatenate([raw, np.zeros((len(x), pad), np.uint8)], axis=1)
    words = np.ascontiguousarray(raw).view(np.uint64)
    h = np.zeros(len(x), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            h = splitmix64(h * _POLY + words[:, j])
    return h


def combine(hashes: list[np.ndarray]) -> np.ndarray:
    """Order-sensitive combination of several column hashes into one row hash."""
    h = np.zeros(len(hashes[0]) if hashes else 0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in hashes:
            h = splitmix64(h * _POLY ^ col)
    return h


def shard_of(keys: pa.Array | pa.ChunkedArray | np.ndarray, shards: int) -> np.ndarray:
    """The shard (``hash(key) % shards``) of each key, as int64."""
    if isinstance(keys, np.ndarray):
        keys = pa.array(keys)
    return (hash_array(keys) % np.uint64(shards)).astype(np.int64)


def row_hashes(batch: pa.RecordBatch | pa.Table, columns: list[str]) -> np.ndarray:
    """A content fingerprint of each row over ``columns`` (dedupe and versioning)."""
    return combine([hash_array(batch.column(c)) for c in columns])


__all__ = ["combine", "hash_array", "hash_bytes", "row_hashes", "shard_of", "splitmix64"]
