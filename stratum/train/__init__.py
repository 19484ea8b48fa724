"""Training: one loop, pluggable strategies, checkpoints, and registration.

>>> from stratum.train import fit, load_config  # doctest: +SKIP
>>> version = fit(load_config("examples/digits.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

from stratum.train.config import TrainConfig, load_config, parse_config
from stratum.train.fit import fit
from stratum.train.loop import Progress

__all__ = ["Progress", "TrainConfig", "fit", "load_config", "parse_config"]
