"""TLS contexts from settings: what a server listens with and what Stratum's own clients
(CLI, control plane, gateways) trust and present.

One place builds them, so every server enforces the same floor (TLS 1.2, the ssl
module's default ciphers) and every bad file gives the same actionable error at start
instead of a handshake failure later.
"""

from __future__ import annotations

import ssl
from typing import Any

from stratum.config import ClientTlsSettings, TlsSettings
from stratum.errors import ConfigError


def server_context(tls: TlsSettings, *, where: str) -> ssl.SSLContext | None:
    """The context ``tls`` describes (None when it is off); mutual when it names a CA."""
    if not tls.enabled:
        return None
    assert tls.cert_file is not None and tls.key_file is not None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, where, tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        _trust(ctx, where, tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(client: ClientTlsSettings) -> ssl.SSLContext:
    """What our clients verify servers with (``client_tls.ca_file``, else the system's
    CAs) and the certificate they present when a server asks (mutual TLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client.ca_file is not None:
        _trust(ctx, "client_tls", client.ca_file)
    if client.cert_file is not None and client.key_file is not None:
        _load(ctx, "client_tls", client.cert_file, client.key_file)
    return ctx


def uvicorn_ssl(tls: TlsSettings, *, where: str) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` that serve ``tls`` (none when it is off).
    The files are loaded once here first, so a bad one is a ConfigError, not uvicorn's
    traceback."""
    if server_context(tls, where=where) is None:
        return {}
    options: dict[str, Any] = {"ssl_certfile": str(tls.cert_file),
                               "ssl_keyfile": str(tls.key_file)}
    if tls.client_ca_file is not None:
        options |= {"ssl_ca_certs": str(tls.client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options


def _load(ctx: ssl.SSLContext, where: str, cert: Any, key: Any) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}.tls: cannot load certificate {cert} with key {key}: "
                          f"{exc}", hint="`stratum tls init` makes a CA and certificates"
                          ) from exc


def _trust(ctx: ssl.SSLContext, where: str, ca: Any) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}: cannot load CA certificates from {ca}: {exc}") from exc


__all__ = ["client_context", "server_context", "uvicorn_ssl"]
