"""A registered ONNX graph as a predictor: a torch net's export (logits) or a skl2onnx model
(label + probabilities)."""

from __future__ import annotations

import numpy as np

from stratum.errors import IntegrityError
from stratum.models.onnx import session
from stratum.models.outputs import softmax, spec_outputs
from stratum.store import LoadedModel


class OnnxPredictor:
    framework = "onnx"
    backend = "onnx"
    fallback_reason: str | None = None

    def __init__(self, loaded: LoadedModel, *, threads: int | None = None) -> None:
        try:
            self._sess = session(loaded.onnx_graph(), threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise IntegrityError(f"model {loaded.name} v{loaded.version}: bad ONNX file: {exc}") \
                from exc
        first = self._sess.get_inputs()[0]
        self._input = first.name
        self._dtype = np.float64 if first.type == "tensor(double)" else np.float32
        self._classify = loaded.spec.task == "classification"
        self._k = spec_outputs(loaded)

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
