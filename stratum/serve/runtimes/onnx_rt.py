"""ONNX Runtime: a torch net exported by compression (logits) or a skl2onnx model
(label + probabilities)."""

from __future__ import annotations

from typing import Any

import numpy as np

from stratum.errors import IntegrityError
from stratum.serve.runtime import num_outputs, softmax
from stratum.store import LoadedModel


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


class OnnxRuntime:
    framework = "onnx"

    def __init__(self, loaded: LoadedModel, *, threads: int | None = None) -> None:
        try:
            self._sess = session(loaded.weights_blob, threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise IntegrityError(f"model {loaded.name} v{loaded.version}: bad ONNX file: {exc}") \
                from exc
        first = self._sess.get_inputs()[0]
        self._input = first.name
        self._dtype = np.float64 if first.type == "tensor(double)" else np.float32
        self._classify = loaded.spec.task == "classification"
        self._k = num_outputs(loaded)

    def predict(self, x: np.ndarray) -> np.ndarray:
        outs = self._sess.run(None, {self._input: x.astype(self._dtype, copy=False)})
        if not self._classify:
            return np.asarray(outs[0], dtype=np.float32).reshape(-1)
        if len(outs) >= 2:  # skl2onnx classifier: (label, probabilities)
            probs = outs[1]
            if isinstance(probs, list):  # ZipMap output: one {class: p} dict per row
                probs = np.array([[row[c] for c in sorted(row)] for row in probs])
            return np.asarray(probs, dtype=np.float32)
        z = np.asarray(outs[0], dtype=np.float32).reshape(len(x), -1)
        if z.shape[1] != self._k:
            raise IntegrityError(f"ONNX model gives {z.shape[1]} outputs for {self._k} classes")
        return softmax(z)
