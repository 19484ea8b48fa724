"""The control plane: the supervisor that reconciles wanted deployments with running
replica and gateway processes, its admin HTTP API, and a client for the CLI."""

from stratum.control.client import ControlClient
from stratum.control.spec import DeploymentSpec, build_spec
from stratum.control.supervisor import Supervisor

__all__ = ["ControlClient", "DeploymentSpec", "Supervisor", "build_spec"]
