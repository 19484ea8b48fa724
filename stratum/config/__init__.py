"""Settings: one pydantic object, built at the edge and passed down."""

from stratum.config.settings import (
    ControlSettings,
    DataSettings,
    GatewaySettings,
    HttpLimits,
    OnlineSettings,
    ServeSettings,
    Settings,
    TrainSettings,
    load_settings,
)

__all__ = [
    "ControlSettings",
    "DataSettings",
    "GatewaySettings",
    "HttpLimits",
    "OnlineSettings",
    "ServeSettings",
    "Settings",
    "TrainSettings",
    "load_settings",
]
