"""HTTP-facing errors of the replica: each maps bad input to a 4xx, never a 5xx.

They extend the ``stratum.errors`` hierarchy so every layer renders them the same way
(``to_dict()`` → ``{"error", "message", "hint"}``).
"""

from __future__ import annotations

from stratum.errors import (
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServingError,
    SignatureError,
    StratumError,
)


class UnsupportedMediaTypeError(StratumError):
    http_status = 415


class MethodNotAllowedError(StratumError):
    http_status = 405


class UnknownModelError(NotFoundError):
    http_status = 404


class NotReadyError(ServingError):
    """The replica is draining or not loaded yet; a gateway should try another one."""

    http_status = 503


__all__ = [
    "BadRequestError",
    "MethodNotAllowedError",
    "NotReadyError",
    "PayloadTooLargeError",
    "SignatureError",
    "UnknownModelError",
    "UnsupportedMediaTypeError",
]
