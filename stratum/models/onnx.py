"""ONNX: inference sessions, and a torch network exported to a checked, cached graph.

Why: eager PyTorch returns to Python after every op and must take the GIL back each time,
and in a busy replica the event loop holds it most of the time. Measured in-process with
one GIL-busy thread beside the forward pass (mnist cnn, batch 32, 2 cores): eager torch
went from 3.2 to 40.7 ms a batch, TorchScript from 2.0 to 17.1 ms, ONNX Runtime from
0.9 to 2.3 ms — ``session.run`` executes the whole graph with the GIL released.

The registry keeps the safetensors weights as the source of truth; the ONNX graph is a
derived artifact. It is exported with PyTorch's ``torch.export``-based exporter (batch
dimension dynamic), cached on local disk by a digest of the weights, the spec and the
library versions, and used only after its outputs match the eager network on a probe
batch. Any failure (no onnxruntime/onnxscript, an op the exporter lacks, a mismatch)
leaves the runtime on eager PyTorch and says why in ``fallback_reason``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

PROBE_ROWS = 3


def session(model: bytes, threads: int | None) -> Any:
    """A CPU inference session set up for a replica, where the event loop shares the cores."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle intra-op threads would spin for work and take the core the event loop needs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def cache_key(weights: bytes, spec: dict[str, Any]) -> str:
    """What the exported graph depends on: weights, network definition, library versions."""
    import onnxruntime
    import onnxscript

    h = hashlib.sha256(weights)
    h.update(json.dumps({"spec": spec, "torch": torch.__version__,
                         "onnxscript": onnxscript.__version__,
                         "onnxruntime": onnxruntime.__version__}, sort_keys=True).encode())
    return h.hexdigest()[:32]


def export_onnx(net: nn.Module, input_shape: list[int]) -> bytes:
    """The network as an ONNX model with a dynamic batch dimension (input ``x``)."""
    example = torch.zeros(2, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about optional packages
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            net, (example,), dynamo=True, input_names=["x"], output_names=["y"],
            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
        )
    assert program is not None
    data: bytes = program.model_proto.SerializeToString()
    return data


def cached_export(net: nn.Module, input_shape: list[int], key: str,
                  cache_dir: Path | None, *, refresh: bool = False) -> tuple[bytes, bool]:
    """``(onnx bytes, from_cache)``; a fresh export (always, with ``refresh``) is written
    atomically to the cache, replacing what was there."""
    path = cache_dir / "onnx" / f"{key}.onnx" if cache_dir is not None else None
    if path is not None and path.exists() and not refresh:
        return path.read_bytes(), True
    data = export_onnx(net, input_shape)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return data, False


def matches(got: np.ndarray, want: np.ndarray) -> bool:
    """Float-rounding agreement, scaled to the outputs' magnitude."""
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-3,
                                                        atol=1e-4 * scale))


def probe(input_shape: list[int]) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(PROBE_ROWS, *input_shape)).astype(np.float32)


__all__ = ["cache_key", "cached_export", "export_onnx", "matches", "probe", "session"]
