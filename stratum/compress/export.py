"""The ONNX export pass: a torch version as a checked ONNX graph, registered as a child.

A replica given a torch version exports it at start (and caches the graph on its own
disk); a replica given this child loads the graph as it is, on any machine, without
importing torch. The graph is kept only if ONNX Runtime's outputs (logits, or values)
match the eager network's on the test rows: the largest absolute difference goes into the
report, and more than ``TOLERANCE`` (scaled by the outputs' magnitude) refuses the pass.
"""

from __future__ import annotations

import numpy as np

from stratum.errors import IntegrityError
from stratum.models import load_network
from stratum.models.onnx import export_onnx, session
from stratum.store import LoadedModel

TOLERANCE = 1e-4
CHECK_ROWS = 256


def eager_outputs(loaded: LoadedModel, x: np.ndarray) -> np.ndarray:
    import torch

    net = load_network(loaded)
    with torch.inference_mode():
        out: np.ndarray = net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    return out


def to_onnx(loaded: LoadedModel, x_check: np.ndarray) -> tuple[bytes, float]:
    """``(graph bytes, max |onnx - eager|)`` for a torch version; checked on ``x_check``."""
    x = np.ascontiguousarray(x_check[:CHECK_ROWS], dtype=np.float32)
    data = export_onnx(load_network(loaded), loaded.spec.input_shape)
    want = eager_outputs(loaded, x)
    (got,) = session(data, None).run(None, {"x": x})
    diff = float(np.abs(np.asarray(got).reshape(want.shape) - want).max(initial=0.0))
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    if not diff <= TOLERANCE * scale:
        raise IntegrityError(f"model {loaded.name} v{loaded.version}: the ONNX export differs "
                             f"from the eager network by {diff:.3g} (tolerance "
                             f"{TOLERANCE * scale:.3g}); nothing registered")
    return data, diff


__all__ = ["TOLERANCE", "eager_outputs", "to_onnx"]
