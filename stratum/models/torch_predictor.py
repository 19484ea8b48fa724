"""A torch version as a predictor: rebuild the zoo network, load its weights, infer.

With ``backend="onnxruntime"`` (the replica's default, ``serve.torch_backend``) the network
runs in ONNX Runtime: exported at load, checked against the eager network, cached by
weights digest — see ``stratum.models.onnx`` for why (the GIL). Otherwise, or when that
fails, it runs eagerly under ``inference_mode``. (Once the export is cached, a replica is
served by ``stratum.models.exported`` and never builds this class, nor imports torch.)

Convolutional networks are served in the channels-last (NHWC) memory layout: oneDNN's CPU
convolutions and pooling run 2-3x faster on it than on the NCHW layout a network trains
in, and the results are the same to float rounding (``bench/serve.py`` prints both
forward passes; ``tests/unit/test_serve_runtime.py`` checks they agree).

On a GPU (``device="cuda"``) the network runs eagerly there, optionally under bfloat16
autocast; a batch crosses to the device and its probabilities come back as float32.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stratum.errors import IntegrityError
from stratum.models import onnx as tx
from stratum.models.exported import ExportedPredictor
from stratum.models.zoo import load_network
from stratum.store import LoadedModel

log = logging.getLogger(__name__)


class TorchPredictor:
    framework = "torch"

    def __init__(self, loaded: LoadedModel, *, compile: bool = False,
                 channels_last: bool = True, backend: str = "eager",
                 threads: int | None = None, cache_dir: Path | None = None,
                 device: str = "cpu", bf16: bool = False) -> None:
        spec = loaded.spec
        net = load_network(loaded)
        self.device = torch.device(device)
        if self.device.type != "cpu":
            backend = "eager"  # the ONNX Runtime we ship runs on the CPU only
            net = net.to(self.device)
        self.bf16 = bf16 and self.device.type == "cuda"
        self._classify = spec.task == "classification"
        self.backend = "eager"
        self.fallback_reason: str | None = None
        self._exported: ExportedPredictor | None = None
        if backend == "onnxruntime":
            try:
                self._exported = ExportedPredictor(
                    _onnx_session(net, loaded, threads, cache_dir), self._classify)
                self.backend = "onnxruntime"
            except Exception as exc:  # anything the exporter or ORT raises: serve eagerly
                self.fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                log.warning("model %s v%d: serving with eager PyTorch, not ONNX Runtime (%s)",
                            loaded.name, loaded.version, self.fallback_reason)
        self.channels_last = channels_last and uses_conv2d(net, spec.input_shape)
        if self.channels_last:
            # Documented, but missing from the overloads torch declares for Module.to.
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # compile pays off for bigger nets; it costs seconds of start-up, hence opt-in.
        self._net = torch.compile(net, dynamic=True) if compile else net

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self._exported is not None:
            return self._exported.predict(x)
        if not x.flags.writeable:  # a binary OIP tensor is a view of the request bytes
            x = x.copy()
        with torch.inference_mode(), torch.autocast(
                self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            t = torch.from_numpy(x).to(self.device, non_blocking=True)
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            out = self._net(t).float()
            out = torch.softmax(out, dim=1) if self._classify else out.reshape(-1)
            return out.cpu().numpy()


def _onnx_session(net: nn.Module, loaded: LoadedModel, threads: int | None,
                  cache_dir: Path | None) -> Any:
    """An ONNX Runtime session whose outputs match ``net``'s on a probe batch; the graph is
    cached (with those outputs, for ``exported.from_cache``) only once it does."""
    spec = loaded.spec
    key = tx.cache_key(loaded.weights_blob, spec.model_dump(mode="json"))
    x = tx.probe(spec.input_shape)
    with torch.inference_mode():
        want = net(torch.from_numpy(x)).numpy()
    sess = _cached(cache_dir, key, x, want, threads)
    if sess is not None:
        return sess
    with tx.export_lock(cache_dir, key):  # one export at a time; the others read it after
        sess = _cached(cache_dir, key, x, want, threads)
        if sess is not None:
            return sess
        data = tx.with_probe(tx.export_onnx(net, spec.input_shape), want)
        sess = tx.session(data, threads)
        if not tx.matches(sess.run(None, {"x": x})[0], want):
            raise IntegrityError("the exported ONNX graph does not match the network")
        tx.write_entry(cache_dir, key, data)
        return sess


def _cached(cache_dir: Path | None, key: str, x: np.ndarray, want: np.ndarray,
            threads: int | None) -> Any:
    """A session on the cache entry of ``key`` when it matches ``want``; None when there
    is none, or it is stale or damaged (then it is exported afresh, overwriting it)."""
    data = tx.read_entry(cache_dir, key)
    if data is None:
        return None
    try:
        sess = tx.session(data, threads)
        if tx.matches(sess.run(None, {"x": x})[0], want):
            carried = tx.embedded_probe(sess)  # None: cached before entries carried it
            if carried is None or not tx.matches(carried, want):
                tx.write_entry(cache_dir, key, tx.with_probe(data, want))
            return sess
    except Exception:  # a damaged entry: ONNX Runtime cannot even load it
        pass
    return None


def uses_conv2d(net: nn.Module, input_shape: list[int]) -> bool:
    """Whether ``net`` takes images (C, H, W) through 2-d convolutions: the layout matters."""
    return len(input_shape) == 3 and any(isinstance(m, nn.Conv2d) for m in net.modules())
