"""Compression passes, each a gated child version: pruning (magnitude with sparse storage,
or structured), int8 quantization (dynamic, static), distillation, ONNX export.

>>> from stratum.compress import Prune, Quantize, compress  # doctest: +SKIP
>>> from stratum.train.tune import finetune  # doctest: +SKIP
>>> result = compress(store, "digits@1", [Prune(0.8), Quantize("dynamic")],
...                   max_accuracy_drop=1.0, alias="staging", finetune=finetune)  # +SKIP

See docs/compression.md. ``finetune`` is handed in because training is this package's
sibling (the import contract): the caller that sees both wires them.
"""

from __future__ import annotations

from stratum.compress.gate import EXIT_REFUSED, Gate
from stratum.compress.measure import Figures
from stratum.compress.passes import Distill, Export, Finetune, Prune, Quantize
from stratum.compress.pipeline import compress
from stratum.compress.report import CompressResult, Step

__all__ = ["EXIT_REFUSED", "CompressResult", "Distill", "Export", "Figures", "Finetune",
           "Gate", "Prune", "Quantize", "Step", "compress"]
