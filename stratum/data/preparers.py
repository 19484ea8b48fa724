"""Which ``Preparer`` an ingest uses: ``cluster.backend`` (or ``data ingest --backend``)."""

from __future__ import annotations

from typing import Literal

from stratum.config import Settings
from stratum.data.prepare import LocalPreparer, Preparer


def preparer_for(backend: Literal["local", "ray"], settings: Settings) -> Preparer:
    """In this process (``local``), or on the nodes of the Ray cluster the settings name
    (``ray``; Ray is imported only then)."""
    if backend == "ray":
        from stratum.data.ray_prepare import RayPreparer

        return RayPreparer(settings)
    return LocalPreparer()


__all__ = ["preparer_for"]
