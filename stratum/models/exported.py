"""A torch version served by ONNX Runtime from its export: the predictor ``TorchPredictor``
runs on its ONNX backend, and the one a replica gets straight from the export cache.

``from_cache`` is the replica's fast start: a version exported before (by any replica on
this home) is checked against the eager network's outputs that its cache entry carries
(see ``stratum.models.onnx``), so torch is never imported — it is most of a replica's
start-up otherwise (~1.1 s of ~2.4 s on the 2-core development machine). Anything
unusual (no entry, an entry from before entries carried their probe, a damaged or
mismatching one) answers None and the caller takes the full path, which exports and
checks against the network and rewrites the entry.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from stratum.models import onnx as tx
from stratum.models.outputs import softmax
from stratum.store import LoadedModel

log = logging.getLogger(__name__)


class ExportedPredictor:
    """``predict(x)``: the graph's logits as probabilities (classifier) or values."""

    framework = "torch"
    backend = "onnxruntime"
    fallback_reason: str | None = None

    def __init__(self, session: Any, classify: bool) -> None:
        self.session = session
        self._classify = classify

    def predict(self, x: np.ndarray) -> np.ndarray:
        (z,) = self.session.run(None, {"x": x.astype(np.float32, copy=False)})
        return softmax(z) if self._classify else z.reshape(-1)


def from_cache(loaded: LoadedModel, threads: int | None,
               cache_dir: Path | None) -> ExportedPredictor | None:
    """The cached export of ``loaded``, checked against its embedded probe; else None."""
    spec = loaded.spec
    try:
        key = tx.cache_key(loaded.weights_blob, spec.model_dump(mode="json"))
        data = tx.read_entry(cache_dir, key)
        if data is None:
            return None
        sess = tx.session(data, threads)
        want = tx.embedded_probe(sess)
        if want is None:
            return None
        (got,) = sess.run(None, {"x": tx.probe(spec.input_shape)})
        if not tx.matches(got, want):
            log.warning("model %s v%d: cached ONNX export disagrees with its probe; "
                        "exporting afresh", loaded.name, loaded.version)
            return None
    except Exception as exc:  # onnxruntime's own untyped errors, a damaged entry, no ORT
        log.info("model %s v%d: no usable cached ONNX export (%s: %s)", loaded.name,
                 loaded.version, type(exc).__name__, str(exc).splitlines()[0] if str(exc)
                 else "")
        return None
    return ExportedPredictor(sess, spec.task == "classification")


__all__ = ["ExportedPredictor", "from_cache"]
