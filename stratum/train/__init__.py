"""Training: one loop, pluggable strategies, checkpoints, and registration.

>>> from stratum.train import fit, load_config  # doctest: +SKIP
>>> version = fit(load_config("examples/digits.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratum.lazy import lazy_exports
from stratum.train.config import TrainConfig, load_config, parse_config

if TYPE_CHECKING:
    from stratum.train.fit import fit
    from stratum.train.loop import Progress

# The loop and ``fit`` import torch and every strategy (~1.4 s): loaded on first use, so
# that reading a config, or a CLI command that never trains, does not pay for them.
_LAZY = {
    "fit": "stratum.train.fit",
    "Progress": "stratum.train.loop",
}

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = ["Progress", "TrainConfig", "fit", "load_config", "parse_config"]
