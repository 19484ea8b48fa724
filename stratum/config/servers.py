"""What each server Stratum runs accepts and how it speaks: HTTP limits and TLS.

Settings sections of their own (``gateway.http``, ``serve.tls``, ``client_tls`` ...), kept
apart from ``settings`` because the three servers share them and each is long.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, model_validator


class HttpLimits(BaseModel):
    """What one HTTP server accepts from a client before it refuses or hangs up.

    One model, one instance per server section (``gateway.http``, ``serve.http``,
    ``control.http``): the three face different clients (anyone; only gateways; operators),
    so each is tuned on its own, e.g. ``STRATUM_GATEWAY__HTTP__MAX_CONNECTIONS=8192``.
    Body limits stay each section's ``max_body_bytes``.
    """

    max_url_bytes: int = Field(8 * 1024, ge=256, le=65_535)  # over it: 414
    # Names, values and line ends of all header lines together; over it: 431.
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    max_headers: int = Field(100, ge=8)  # over it: 431
    # From a request's first byte to the end of its headers, then to the end of its body;
    # over either: 408 and a closed connection.
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    # A connection with no request in flight (new, or between requests) is closed after
    # this long.
    keep_alive_s: float = Field(5.0, gt=0)
    # Open connections per process. At the cap a new connection closes the longest-idle
    # ones; when every connection is mid-request it gets a 503 and is closed.
    max_connections: int = Field(1024, ge=8)


# Each section's own defaults live on a subclass rather than in a default_factory, so that
# setting one field (env or YAML) keeps the section's defaults for the others.
class ReplicaHttpLimits(HttpLimits):
    # Above the gateway's, so whatever a gateway accepts and forwards (with the few
    # headers it adds) is never refused by the replica behind it.
    max_header_bytes: int = Field(32 * 1024, ge=1024)
    max_headers: int = Field(128, ge=8)


class GatewayHttpLimits(HttpLimits):
    max_connections: int = Field(4096, ge=8)  # the front door: many clients


class ControlHttpLimits(HttpLimits):
    max_connections: int = Field(256, ge=8)  # operators, the CLI and the dashboard


def _absolute(path: Path | None) -> Path | None:
    # Children start in / (config/child.py): a relative path means the folder the
    # command was typed in, so it is fixed here, where that folder is known.
    return None if path is None else path.expanduser().resolve()


class TlsSettings(BaseModel):
    """A server's TLS: with ``cert_file`` and ``key_file`` (PEM) it serves HTTPS only.
    ``client_ca_file`` makes it mutual: a client without a certificate signed by that CA
    is refused in the handshake. ``stratum tls init`` makes a CA and all of these."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file, or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file (mutual TLS) needs cert_file and key_file")
        self.cert_file, self.key_file = _absolute(self.cert_file), _absolute(self.key_file)
        self.client_ca_file = _absolute(self.client_ca_file)
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @property
    def scheme(self) -> str:
        return "https" if self.enabled else "http"


class ClientTlsSettings(BaseModel):
    """How Stratum's own clients (the CLI, the control plane, gateways) reach Stratum
    servers over TLS: the CA they trust (default: the system's) and the certificate they
    present to a server that asks for one (replicas with ``serve.tls.client_ca_file``)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> ClientTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file, or neither")
        self.ca_file = _absolute(self.ca_file)
        self.cert_file, self.key_file = _absolute(self.cert_file), _absolute(self.key_file)
        return self


__all__ = ["ClientTlsSettings", "ControlHttpLimits", "GatewayHttpLimits", "HttpLimits",
           "ReplicaHttpLimits", "TlsSettings"]
