"""The data layer: sources -> cleaning -> split -> preprocessing -> hash-sharded versions.

>>> # result = ingest("builtin:iris", "iris", store)             # doctest: +SKIP
>>> # X, y = open_dataset(store, "iris@latest").load("train")     # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratum.lazy import lazy_exports

if TYPE_CHECKING:
    from stratum.data.dataset import Dataset, open_dataset
    from stratum.data.ingest import IngestResult, ingest
    from stratum.data.preprocessing import Pipeline
    from stratum.data.schema import Feature, Schema

# Loaded on first use: a replica imports ``stratum.data.signature`` only, and importing
# this package must not bring pyarrow and the ingest sources with it (~0.2 s of start-up).
_LAZY = {
    "Dataset": "stratum.data.dataset",
    "open_dataset": "stratum.data.dataset",
    "IngestResult": "stratum.data.ingest",
    "ingest": "stratum.data.ingest",
    "Pipeline": "stratum.data.preprocessing",
    "Feature": "stratum.data.schema",
    "Schema": "stratum.data.schema",
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["Dataset", "Feature", "IngestResult", "Pipeline", "Schema", "ingest", "open_dataset"]
