"""Sparse weights in safetensors: a pruned network's artifact that really shrinks.

A magnitude-pruned layer is mostly zeros, and a dense safetensors file stores every one of
them in 32 bits. Here each tensor that is at least ``MIN_ZEROS`` zeros is stored as two
tensors of the same safetensors file:

- ``NAME::mask`` — one bit per element (``numpy.packbits``, row-major), deflated (zlib):
  a 1 marks a kept weight;
- ``NAME::values`` — the kept weights, in order, in their own dtype, uncompressed.

The header's metadata says which tensors are sparse and their shape and dtype
(``stratum.sparse``). Why a bitmask and not COO/CSR: at density d a bitmask costs
``32·d + 1`` bits an element against COO/CSR's ``(32 + 32)·d`` (int32 indices), so it is
smaller at any density above ~3%, which covers every useful sparsity (50-95%); it needs no
index arithmetic to densify (one boolean scatter); and the deflate pass takes the mask
down towards its entropy (an 80%-sparse mask deflates to ~0.75 bit an element). The
values are float noise to a compressor (deflate saves <10% on them), so they are left
raw. At 80% sparsity a float32 layer takes ~7.4 of 32 bits: ~23% of the dense file.

**ONNX graphs** (the int8 or exported child of a pruned network) cannot hold a bitmask:
ONNX's own sparse initializers are COO with int64 indices, larger than the dense int8
tensor at any useful density. So a graph is stored deflated as a whole behind a short
header (``pack_graph``: ``GRAPH_MAGIC``, its size, zlib level 9) when that saves at least
``MIN_GRAPH_SAVING``: the zeros of a pruned network's int8 weights deflate away (the
80%-pruned mnist cnn's int8 graph: 430 KB -> 135 KB; a dense int8 graph 15-20%), while
a dense float graph saves ~8% and stays as it is. Deflate, not xz: xz saved 15% more on
the pruned graph, but decompresses 15-25x slower (~1.5 s for 16 MB), paid at every start.

Loading (``densify``) rebuilds dense tensors — the forward pass runs dense, in ONNX Runtime
or PyTorch, where 80% sparsity is not fast enough to pay for sparse kernels. Nothing is
unpickled, and decompression is bounded by the shape the header declares.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from stratum.errors import IntegrityError

FORMAT_KEY = "stratum.format"
FORMAT = "sparse-bitmask-deflate-v1"
SPARSE_KEY = "stratum.sparse"
MIN_ZEROS = 0.3  # below this a bitmask + values is not smaller than the dense tensor
GRAPH_MAGIC = b"stratum-onnx-deflate-v1\n"  # never the start of an ONNX protobuf
MIN_GRAPH_SAVING = 0.1
MAX_GRAPH_BYTES = 2**31  # protobuf's limit: bounds what a damaged header can ask for
_MASK, _VALUES = "::mask", "::values"


def header_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its JSON header only."""
    if len(blob) < 8:
        return {}
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8 or n > 100_000_000:
        return {}
    try:
        header = json.loads(blob[8:8 + n])
    except ValueError:
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def is_sparse(blob: bytes) -> bool:
    return header_metadata(blob).get(FORMAT_KEY) == FORMAT


def sparsify(tensors: Mapping[str, Any], min_zeros: float = MIN_ZEROS) -> bytes:
    """A state dict (torch tensors or numpy arrays) as sparse safetensors bytes."""
    from safetensors.numpy import save

    out: dict[str, np.ndarray] = {}
    layout: dict[str, dict[str, Any]] = {}
    for name, t in tensors.items():
        a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        a = np.ascontiguousarray(a)
        if _MASK in name or _VALUES in name:
            raise ValueError(f"tensor name {name!r} clashes with the sparse format")
        keep = a != 0
        if a.size < 64 or a.dtype.kind != "f" or 1 - keep.mean() < min_zeros:
            out[name] = a
            continue
        mask = zlib.compress(np.packbits(keep.ravel()).tobytes(), 9)
        out[name + _MASK] = np.frombuffer(mask, dtype=np.uint8)
        out[name + _VALUES] = a[keep]
        layout[name] = {"shape": list(a.shape), "dtype": a.dtype.str, "nnz": int(keep.sum())}
    data: bytes = save(out, metadata={FORMAT_KEY: FORMAT, SPARSE_KEY: json.dumps(layout)})
    return data


def densify(blob: bytes) -> dict[str, Any]:
    """The dense torch state dict of a sparse safetensors file."""
    import torch
    from safetensors.numpy import load

    try:
        layout = json.loads(header_metadata(blob)[SPARSE_KEY])
        arrays = load(blob)
    except (KeyError, ValueError) as exc:
        raise IntegrityError(f"damaged sparse weights file: {exc}") from exc
    dense: dict[str, Any] = {}
    for name, a in arrays.items():
        if not (name.endswith(_MASK) or name.endswith(_VALUES)):
            dense[name] = torch.from_numpy(a.copy())
    for name, info in layout.items():
        shape = [int(s) for s in info["shape"]]
        size = math.prod(shape)
        try:
            d = zlib.decompressobj()
            packed = d.decompress(arrays[name + _MASK].tobytes(), (size + 7) // 8)
            values = arrays[name + _VALUES]
        except (KeyError, zlib.error) as exc:
            raise IntegrityError(f"damaged sparse weights for {name}: {exc}") from exc
        keep = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=size).astype(bool)
        if len(packed) != (size + 7) // 8 or int(keep.sum()) != len(values):
            raise IntegrityError(f"sparse weights for {name}: mask and values disagree")
        out = np.zeros(size, dtype=np.dtype(info["dtype"]))
        out[keep] = values
        dense[name] = torch.from_numpy(out.reshape(shape))
    return dense


def pack_graph(graph: bytes) -> bytes:
    """An ONNX graph deflated behind ``GRAPH_MAGIC`` when that saves at least
    ``MIN_GRAPH_SAVING``; else the graph as it is."""
    packed = GRAPH_MAGIC + struct.pack("<Q", len(graph)) + zlib.compress(graph, 9)
    return packed if len(packed) <= (1 - MIN_GRAPH_SAVING) * len(graph) else graph


def is_packed_graph(blob: bytes) -> bool:
    return blob.startswith(GRAPH_MAGIC)


def unpack_graph(blob: bytes) -> bytes:
    """The ONNX graph of a stored blob, packed (``pack_graph``) or not."""
    if not is_packed_graph(blob):
        return blob
    head = len(GRAPH_MAGIC)
    if len(blob) < head + 8:
        raise IntegrityError("damaged packed ONNX graph: no size")
    (size,) = struct.unpack_from("<Q", blob, head)
    if size > MAX_GRAPH_BYTES:
        raise IntegrityError(f"damaged packed ONNX graph: declares {size} bytes")
    d = zlib.decompressobj()
    try:
        graph = d.decompress(blob[head + 8:], size)
    except zlib.error as exc:
        raise IntegrityError(f"damaged packed ONNX graph: {exc}") from exc
    if len(graph) != size or not d.eof:
        raise IntegrityError("damaged packed ONNX graph: its size does not match")
    return graph


__all__ = ["FORMAT", "GRAPH_MAGIC", "densify", "header_metadata", "is_packed_graph",
           "is_sparse", "pack_graph", "sparsify", "unpack_graph"]
