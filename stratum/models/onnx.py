"""ONNX: inference sessions, and a torch network exported to a checked, cached graph.

Why: eager PyTorch returns to Python after every op and must take the GIL back each time,
and in a busy replica the event loop holds it most of the time. Measured in-process with
one GIL-busy thread beside the forward pass (mnist cnn, batch 32, 2 cores): eager torch
went from 3.2 to 40.7 ms a batch, TorchScript from 2.0 to 17.1 ms, ONNX Runtime from
0.9 to 2.3 ms — ``session.run`` executes the whole graph with the GIL released.

The registry keeps the safetensors weights as the source of truth; the ONNX graph is a
derived artifact. It is exported with PyTorch's ``torch.export``-based exporter (batch
dimension dynamic), used only after its outputs match the eager network on a probe
batch, and then cached on local disk by a digest of the weights, the spec and the
library versions. Any failure (no onnxruntime/onnxscript, an op the exporter lacks, a
mismatch) leaves the runtime on eager PyTorch and says why in ``fallback_reason``.

A cache entry carries the eager network's outputs on the probe batch in its own metadata
(``PROBE_KEY``), so a replica can check a cached graph without the network: it never
imports torch (about a second of start-up) to serve a version exported before. Nothing
here imports torch at module level for the same reason.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)
PROBE_ROWS = 3
PROBE_KEY = "stratum.probe"  # metadata entry: {"shape": [...], "y": [...]} of the eager net
DISABLED_OPTIMIZERS_KEY = "stratum.ort.disabled_optimizers"  # comma-separated names


def session(model: bytes, threads: int | None) -> Any:
    """A CPU inference session set up for a replica, where the event loop shares the cores."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle intra-op threads would spin for work and take the core the event loop needs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    # A graph may name ONNX Runtime optimizers that make it slower (metadata
    # DISABLED_OPTIMIZERS_KEY, written by stratum.compress.quantize, which says why).
    off = sess.get_modelmeta().custom_metadata_map.get(DISABLED_OPTIMIZERS_KEY)
    if off:
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=off.split(","))
    return sess


@cache
def _versions() -> dict[str, str]:
    # The installed distributions' versions, read from their metadata: the same strings as
    # the modules' __version__, without importing torch and onnxscript (~1.5 s together).
    # A missing one raises PackageNotFoundError, an ImportError, as the import did.
    return {p: metadata.version(p) for p in ("torch", "onnxscript", "onnxruntime")}


def cache_key(weights: bytes, spec: dict[str, Any]) -> str:
    """What the exported graph depends on: weights, network definition, library versions."""
    h = hashlib.sha256(weights)
    h.update(json.dumps({"spec": spec, **_versions()}, sort_keys=True).encode())
    return h.hexdigest()[:32]


def export_onnx(net: nn.Module, input_shape: list[int]) -> bytes:
    """The network as an ONNX model with a dynamic batch dimension (input ``x``)."""
    import torch

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


def with_probe(model: bytes, want: np.ndarray) -> bytes:
    """``model`` with the eager network's probe outputs in its metadata (``PROBE_KEY``)."""
    import onnx

    proto = onnx.load_model_from_string(model)
    for i, prop in enumerate(proto.metadata_props):
        if prop.key == PROBE_KEY:
            del proto.metadata_props[i]
            break
    entry = proto.metadata_props.add()
    entry.key = PROBE_KEY
    entry.value = json.dumps({"shape": list(want.shape),
                              "y": want.astype(np.float32).ravel().tolist()})
    data: bytes = proto.SerializeToString()
    return data


def embedded_probe(sess: Any) -> np.ndarray | None:
    """The probe outputs a cached graph carries, or None (an entry from before they did)."""
    raw = sess.get_modelmeta().custom_metadata_map.get(PROBE_KEY)
    if raw is None:
        return None
    doc = json.loads(raw)
    return np.asarray(doc["y"], dtype=np.float32).reshape(doc["shape"])


def entry_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "onnx" / f"{key}.onnx"


@contextmanager
def export_lock(cache_dir: Path | None, key: str, timeout: float = 120.0) -> Iterator[None]:
    """Held while one process exports ``key``: the replicas of a first deploy start
    together, and N exports at once on a small machine take N times as long each (one
    export is ~4 s of CPU for the mnist cnn); the others wait, then read the entry.
    Past ``timeout`` (an export that hangs) a waiter goes on and exports itself."""
    if cache_dir is None:
        yield
        return
    path = cache_dir / "onnx.locks" / f"{key}.lock"  # beside the entries, not among them
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning("waited %.0f s for another export of %s; exporting too",
                                timeout, key)
                    break
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_entry(cache_dir: Path | None, key: str) -> bytes | None:
    if cache_dir is None:
        return None
    try:
        return entry_path(cache_dir, key).read_bytes()
    except FileNotFoundError:
        return None


def write_entry(cache_dir: Path | None, key: str, data: bytes) -> None:
    """Write ``data`` atomically (a temporary file, then a rename), replacing the entry."""
    if cache_dir is None:
        return
    path = entry_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def matches(got: np.ndarray, want: np.ndarray) -> bool:
    """Float-rounding agreement, scaled to the outputs' magnitude."""
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-3,
                                                        atol=1e-4 * scale))


def probe(input_shape: list[int]) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(PROBE_ROWS, *input_shape)).astype(np.float32)


__all__ = ["DISABLED_OPTIMIZERS_KEY", "PROBE_KEY", "cache_key", "embedded_probe",
           "export_onnx", "matches", "probe", "read_entry", "session", "with_probe",
           "write_entry"]
