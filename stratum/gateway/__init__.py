"""The gateway: the public front door of a deployment (routing, retries, canary, shadow,
API keys, rate limit, metrics), stateless so several can run side by side."""

from stratum.gateway.app import Gateway
from stratum.gateway.traffic import GroupSpec, PoolSpec, RoutesSpec, ShadowSpec, static_routes

__all__ = ["Gateway", "GroupSpec", "PoolSpec", "RoutesSpec", "ShadowSpec", "static_routes"]
