"""The exception hierarchy every Stratum layer raises.

Each error carries a message a user can act on: what went wrong, where (file, row,
column, field, version) and, where it helps, what to do. ``http_status`` lets the HTTP
layers turn any of them into the same message as JSON without a lookup table. Every layer
raises from this one tree (HTTP status in brackets); no module defines its own:

    StratumError (500)
    ├── AuthError (401)
    │   └── PermissionDeniedError (403)
    ├── BadRequestError (400)
    ├── ClusterError (503)
    ├── ConfigError (400)
    ├── ConflictError (409)
    ├── DataError (422)
    │   ├── NonFiniteOutputError (422)
    │   └── SignatureError (422)
    ├── HeadersTooLargeError (431)
    ├── IntegrityError (500)
    ├── InvalidNameError (400)
    ├── MethodNotAllowedError (405)
    ├── NotFoundError (404)
    │   └── UnknownModelError (404)
    ├── PayloadTooLargeError (413)
    ├── QueueError (503)
    ├── RateLimitedError (429)
    ├── RequestTimeoutError (408)
    ├── ServingError (503)
    │   ├── NoLeaderError (503)
    │   ├── NoReplicaError (503)
    │   ├── NotLeaderError (307)
    │   ├── NotReadyError (503)
    │   └── UpstreamError (502)
    ├── StoreUnavailableError (503)
    ├── TrainingError (500)
    ├── UnsupportedMediaTypeError (415)
    └── UrlTooLongError (414)

``tests/unit/test_architecture.py`` checks this drawing against the classes.
"""

from __future__ import annotations


class StratumError(Exception):
    """Base of every error Stratum raises on purpose."""

    http_status: int = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def to_dict(self) -> dict[str, str]:
        out = {"error": type(self).__name__, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        return out


class ConfigError(StratumError):
    """A setting, config file or command-line option is wrong."""

    http_status = 400


class InvalidNameError(StratumError):
    """A name (dataset, model, artifact path, alias) is not allowed."""

    http_status = 400


class NotFoundError(StratumError):
    """A dataset, version, model, alias, deployment or artifact does not exist."""

    http_status = 404


class ConflictError(StratumError):
    """The operation clashes with existing state (a name taken, a port busy)."""

    http_status = 409


class DataError(StratumError):
    """Input data is unreadable, malformed or does not match its schema."""

    http_status = 422


class BadRequestError(StratumError):
    """A request is malformed: not JSON, a field missing or of the wrong kind."""

    http_status = 400


class SignatureError(DataError):
    """Well-formed input that does not match a model's signature (shape, dtype, feature
    names)."""

    http_status = 422


class NonFiniteOutputError(DataError):
    """A model answered NaN or infinity for some inputs (most often inputs far outside
    what it was trained on); nothing non-finite is sent out as a prediction."""

    http_status = 422


class IntegrityError(StratumError):
    """Stored bytes failed their checksum, or a write could not complete atomically."""

    http_status = 500


class TrainingError(StratumError):
    """Training could not start or could not go on (bad model, NaN loss, dead workers)."""

    http_status = 500


class ServingError(StratumError):
    """A replica, gateway or deployment could not serve."""

    http_status = 503


class AuthError(StratumError):
    """Missing or invalid credentials, or a scope the key does not hold."""

    http_status = 401


class PermissionDeniedError(AuthError):
    http_status = 403


class RateLimitedError(StratumError):
    """A key sent more requests than its rate limit allows; retry after the hint's wait."""

    http_status = 429


class UpstreamError(ServingError):
    """A replica could not be reached or broke the connection: safe to try another one for
    an idempotent inference."""

    http_status = 502


class PayloadTooLargeError(StratumError):
    """A request body over the configured limit (replica and gateway alike)."""

    http_status = 413


class UrlTooLongError(StratumError):
    """A request target (path and query) over the server's URL limit."""

    http_status = 414


class HeadersTooLargeError(StratumError):
    """Request headers over the server's size or count limit."""

    http_status = 431


class RequestTimeoutError(StratumError):
    """A client that did not finish sending its request's headers or body in time."""

    http_status = 408


class ClusterError(StratumError):
    """The Ray cluster cannot be reached (no head at ``cluster.address``, not a Ray GCS
    there) or failed to start or place a process. What the cluster refuses by design (a
    replica larger than any node, a store other nodes cannot see) is a ``ConfigError``."""

    http_status = 503


class QueueError(StratumError):
    """The feedback/event queue could not accept or deliver a message."""

    http_status = 503


class UnsupportedMediaTypeError(StratumError):
    """A body in a content type the route does not take."""

    http_status = 415


class MethodNotAllowedError(StratumError):
    """A known path asked with a method it does not answer."""

    http_status = 405


class UnknownModelError(NotFoundError):
    """A request names a model this server does not serve."""


class NotReadyError(ServingError):
    """The replica is draining or not loaded yet; a gateway should try another one."""


class StoreUnavailableError(StratumError):
    """The metadata database does not answer (restarting, unreachable); retry shortly."""

    http_status = 503


class NotLeaderError(ServingError):
    """This control plane stands by; the answer's ``location`` names the leader."""

    http_status = 307


class NoLeaderError(ServingError):
    """No control plane leads at the moment; one takes over within seconds."""


class NoReplicaError(ServingError):
    """A deployment scaled to zero got no ready replica while the gateway held the request
    (``gateway.hold_timeout_s``), or too many requests already wait; retry after the
    answer's ``retry-after``."""


__all__ = [
    "AuthError",
    "BadRequestError",
    "ClusterError",
    "ConfigError",
    "ConflictError",
    "DataError",
    "HeadersTooLargeError",
    "IntegrityError",
    "InvalidNameError",
    "MethodNotAllowedError",
    "NoLeaderError",
    "NoReplicaError",
    "NonFiniteOutputError",
    "NotFoundError",
    "NotLeaderError",
    "NotReadyError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "QueueError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ServingError",
    "SignatureError",
    "StoreUnavailableError",
    "StratumError",
    "TrainingError",
    "UnknownModelError",
    "UnsupportedMediaTypeError",
    "UpstreamError",
    "UrlTooLongError",
]
