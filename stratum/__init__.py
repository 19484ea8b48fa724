"""Stratum: from raw data to a highly available, self-improving prediction service."""

from stratum.errors import StratumError

__version__ = "0.1.0"

__all__ = ["StratumError", "__version__"]
