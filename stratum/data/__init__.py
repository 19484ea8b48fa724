"""The data layer: sources -> cleaning -> split -> preprocessing -> hash-sharded versions.

>>> # result = ingest("builtin:iris", "iris", store)             # doctest: +SKIP
>>> # X, y = open_dataset(store, "iris@latest").load("train")     # doctest: +SKIP
"""

from stratum.data.dataset import Dataset, open_dataset
from stratum.data.ingest import IngestResult, ingest
from stratum.data.preprocessing import Pipeline
from stratum.data.schema import Feature, Schema

__all__ = ["Dataset", "Feature", "IngestResult", "Pipeline", "Schema", "ingest", "open_dataset"]
