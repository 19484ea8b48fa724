"""The replica: one model version behind OIP v2 + a plain predict route, with a dynamic
batcher, hot swap and Prometheus metrics. Run it with ``python -m stratum.serve``."""

from stratum.data.signature import Signature
from stratum.serve.app import Replica
from stratum.serve.batcher import Batcher
from stratum.serve.runtime import Runtime, load_runtime

__all__ = ["Batcher", "Replica", "Runtime", "Signature", "load_runtime"]
