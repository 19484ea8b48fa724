"""The dashboard: pages over the store and the control plane, served by the control plane
itself (``python -m stratum.web`` is that process with the dashboard mounted at ``/ui``)."""

from stratum.web.app import mount

__all__ = ["mount"]
