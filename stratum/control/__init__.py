"""The control plane: the supervisor that reconciles wanted deployments with running
replica and gateway processes, its admin HTTP API, and a client for the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratum.lazy import lazy_exports

if TYPE_CHECKING:
    from stratum.control.client import ControlClient
    from stratum.control.spec import DeploymentSpec, build_spec
    from stratum.control.supervisor import Supervisor

# Loaded on first use: the CLI imports ``stratum.control.client`` (and the lease, the
# discovery record) without the spec and the supervisor, which bring the gateway with them.
_LAZY = {
    "ControlClient": "stratum.control.client",
    "DeploymentSpec": "stratum.control.spec",
    "build_spec": "stratum.control.spec",
    "Supervisor": "stratum.control.supervisor",
}

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = ["ControlClient", "DeploymentSpec", "Supervisor", "build_spec"]
