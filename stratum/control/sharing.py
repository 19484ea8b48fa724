"""Several deployments on one gateway port.

Every gateway on a port receives requests for every deployment there (SO_REUSEPORT lets
the kernel hand any connection to any of them), so each deployment's routing table goes
to all of them, its own gateways and the others' (pushed with the token the receiving
gateway was started with), and a rolling update waits until all of them hold the new
table. When a deployment leaves the port, its table is taken off the gateways that stay.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from stratum.control.remote import Remote
from stratum.control.state import DeploymentState, Gateway


def on_port(states: Iterable[DeploymentState],
            port: int) -> list[tuple[DeploymentState, Gateway]]:
    """Every gateway on ``port``, with the deployment that runs it."""
    return [(o, g) for o in states for g in o.gateways.values() if g.port == port]


async def prune_parts(states: Mapping[str, DeploymentState], remote: Remote) -> None:
    """Have gateways drop the tables of deployments no longer on their port (undeployed, or
    moved to another port); what a gateway would not drop now is tried again next tick."""
    for owner in list(states.values()):
        for gw in list(owner.gateways.values()):
            for name in list(gw.pushed):
                other = states.get(name)
                if other is not None and other.spec is not None and other.spec.port == gw.port:
                    continue
                if await remote.remove_routes(name, gw.admin_url, owner.gateway_token):
                    gw.pushed.pop(name, None)


__all__ = ["on_port", "prune_parts"]
