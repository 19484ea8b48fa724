"""Settings: one pydantic object, built at the edge and passed down."""

from stratum.config.servers import ClientTlsSettings, HttpLimits, TlsSettings
from stratum.config.settings import (
    ClusterSettings,
    ControlSettings,
    DataSettings,
    GatewaySettings,
    OnlineSettings,
    ServeSettings,
    Settings,
    TrainSettings,
    load_settings,
)

__all__ = [
    "ClientTlsSettings",
    "ClusterSettings",
    "ControlSettings",
    "DataSettings",
    "GatewaySettings",
    "HttpLimits",
    "OnlineSettings",
    "ServeSettings",
    "Settings",
    "TlsSettings",
    "TrainSettings",
    "load_settings",
]
