"""int8 quantization of an ONNX graph with ONNX Runtime's tools; served by ONNX Runtime.

- **dynamic**: weights stored int8 (per tensor), activations quantized on the fly per
  batch. Only ``MatMul``/``Gemm`` are quantized: ONNX Runtime's CPU ``ConvInteger`` is
  several times slower than its float ``Conv`` (mnist cnn, batch 32: 820 against 4,100
  samples/s), while the dense layers hold most of the bytes (the cnn's first dense layer
  is 96% of its weights), so the graph still shrinks ~3.5x; it runs only a little faster,
  as the convolutions, most of the cnn's work, stay float.
- **static**: activations calibrated (min/max) on N training samples, weights per channel;
  the QOperator format (``QLinearConv``, ``QGemm``) runs integer kernels end to end (QDQ
  measured no faster). Two things decide its speed on CPU, both measured on the mnist cnn:
  a *shallow* convolution (fewer than ``MIN_DEPTH`` products per output, e.g. 3x3 on a
  1-channel image: 9) stays float — its int8 kernel took 18.6 µs against 4.1 µs in float;
  and ONNX Runtime's ``QDQPropagationTransformer`` is turned off for the graph (metadata
  ``stratum.ort.disabled_optimizers``, read by ``stratum.models.onnx.session``): it would
  move the first ``QuantizeLinear`` above the float ``MaxPool``, which then runs as an
  int8 MaxPool in NCHW layout, 29 µs against 2.4 µs. With both, batch 1 is ~2x faster
  than the float graph (1.4x quantizing everything), at the same accuracy.

The graph is shape-inferred and optimised first (``quant_pre_process``), as ONNX Runtime
recommends; the tools work on files, so everything goes through a private temp folder.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stratum.errors import ConfigError
from stratum.models.onnx import DISABLED_OPTIMIZERS_KEY

MODES = ("dynamic", "static")
MIN_DEPTH = 32  # products per output below which a conv stays float (see the docstring)
SLOW_OPTIMIZERS = ("QDQPropagationTransformer",)


def quantize(graph: bytes, mode: str, calibration: np.ndarray | None = None) -> bytes:
    """``graph`` (float ONNX, input ``x``) quantized to int8; ``calibration`` rows for
    ``static``."""
    if mode not in MODES:
        raise ConfigError(f"unknown quantization mode {mode!r}", hint="dynamic or static")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger("root").setLevel(logging.ERROR)  # the tools log through root
    with tempfile.TemporaryDirectory(prefix="stratum-quant-") as tmp, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src, pre, out = (Path(tmp) / n for n in ("model.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(graph)
        quant_pre_process(str(src), str(pre))
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
        else:
            if calibration is None or len(calibration) == 0:
                raise ConfigError("static quantization needs calibration samples")
            quantize_static(str(pre), str(out), _reader(calibration),
                            quant_format=QuantFormat.QOperator, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            nodes_to_exclude=shallow_convs(pre.read_bytes()))
            return _with_metadata(out.read_bytes(), DISABLED_OPTIMIZERS_KEY,
                                  ",".join(SLOW_OPTIMIZERS))
        return out.read_bytes()


def shallow_convs(graph: bytes) -> list[str]:
    """The Conv nodes with fewer than ``MIN_DEPTH`` products per output (input channels
    per group x kernel size): too little work per output for an int8 kernel to pay."""
    import onnx

    model = onnx.load_model_from_string(graph)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        w = shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 \
            else None
        if w is not None and node.name and math.prod(w[1:]) < MIN_DEPTH:
            out.append(node.name)
    return out


def _with_metadata(graph: bytes, key: str, value: str) -> bytes:
    import onnx

    model = onnx.load_model_from_string(graph)
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
    data: bytes = model.SerializeToString()
    return data


def is_quantized(graph: bytes) -> bool:
    import onnx

    ops = {n.op_type for n in onnx.load_model_from_string(graph).graph.node}
    return bool(ops & {"MatMulInteger", "ConvInteger", "QLinearConv", "QGemm", "QLinearMatMul",
                       "DynamicQuantizeLinear", "QuantizeLinear"})


def _reader(rows: np.ndarray) -> Any:
    """A ``CalibrationDataReader`` giving the calibration rows one at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = self._rows()

        def _rows(self) -> Iterator[dict[str, np.ndarray]]:
            for i in range(len(rows)):
                yield {"x": np.ascontiguousarray(rows[i:i + 1], dtype=np.float32)}

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = self._rows()

    return Reader()


__all__ = ["MIN_DEPTH", "MODES", "is_quantized", "quantize", "shallow_convs"]
