"""The gateway's OpenAPI document, served at ``GET /openapi.json`` without a key.

The gateway answers its probes, ``/metrics`` and ``/admin/*`` itself (``gateway.local``)
and forwards the data path to replicas byte for byte, so the data path here is the
replica's (``stratum.openapi.dataplane``) with what the gateway adds in front: keys and
scopes, the rate limit, models not deployed here, and 503 when no replica could answer.
It is built once per process and holds no secrets, table or replica URLs: the same for
every gateway. ``tests/unit/test_openapi_documents.py`` checks it against
``LocalRoutes.table`` and ``forwards``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from stratum import __version__
from stratum.errors import (
    AuthError,
    ConfigError,
    InvalidNameError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServingError,
)
from stratum.gateway.traffic import RoutesSpec
from stratum.openapi import Operation, build_document
from stratum.openapi.dataplane import (
    BODY_ERRORS,
    DATA_PATH,
    LIVE,
    METRICS,
    OPENAPI,
    PATH_PARAMS,
    READY,
)
from stratum.openapi.document import JSON_MEDIA, Body, Reply

_CLOSED = ConfigDict(extra="forbid")
ADMIN_TOKEN_HEADER = "x-stratum-admin-token"


class ShownRoutes(RoutesSpec):
    secrets: dict[str, str] = Field(default_factory=dict,
                                    description='replica URL → "***": never shown')


class ReplicaState(BaseModel):
    model_config = _CLOSED
    healthy: bool
    outstanding: int
    inflight_s: float = Field(description="request-seconds in flight to it so far")
    requests: int
    errors: int


class RoutesView(BaseModel):
    model_config = _CLOSED
    etag: str = Field(description="a digest of the whole table, secrets included")
    policy: str
    routes: ShownRoutes
    replicas: dict[str, ReplicaState] = Field(description="by replica URL")
    waiting: dict[str, int] = Field(default_factory=dict, description="requests held per "
                                    "deployment scaled to zero, until a replica is ready")
    parts: dict[str, str] = Field(default_factory=dict, description="deployment → the etag "
                                  "of its table (empty name: a whole table, static mode)")


class RetryCounts(BaseModel):
    model_config = _CLOSED
    spent: int
    refused: int


class GatewayInfo(BaseModel):
    model_config = _CLOSED
    role: str
    name: str | None = Field(description="the deployment it fronts; null when static")
    pid: int
    etag: str
    replicas: int
    healthy: int
    retries: RetryCounts


_KEY: tuple[dict[str, list[str]], ...] = ({"bearer": []}, {"apiKey": []})
_ADMIN = (AuthError, PermissionDeniedError)
ADMIN: tuple[Operation, ...] = (
    Operation("GET", "/admin/routes", "The routing table (secrets redacted)", "admin",
              {200: Reply("the table and each replica's health", {JSON_MEDIA: RoutesView})},
              _ADMIN),
    Operation("PUT", "/admin/routes", "Install a routing table (the supervisor's job)",
              "admin", {200: Reply("installed", {JSON_MEDIA: RoutesView})},
              (*_ADMIN, *BODY_ERRORS, ConfigError), Body({JSON_MEDIA: RoutesSpec})),
    Operation("PUT", "/admin/routes/{name}", "Install one deployment's routing table beside "
              "the others served on this port (the supervisor's job)", "admin",
              {200: Reply("installed", {JSON_MEDIA: RoutesView})},
              (*_ADMIN, *BODY_ERRORS, ConfigError, InvalidNameError),
              Body({JSON_MEDIA: RoutesSpec})),
    Operation("DELETE", "/admin/routes/{name}", "Stop serving one deployment", "admin",
              {200: Reply("removed", {JSON_MEDIA: RoutesView})},
              (*_ADMIN, InvalidNameError, NotFoundError)),
    Operation("GET", "/admin/info", "This gateway's state", "admin",
              {200: Reply("its state", {JSON_MEDIA: GatewayInfo})}, _ADMIN),
)
# What the gateway adds in front of a forwarded request.
FORWARDING_ERRORS = (AuthError, PermissionDeniedError, RateLimitedError, NotFoundError,
                     ServingError)

DESCRIPTION = f"""A Stratum gateway: the front door of a deployment. It forwards the data
path (OIP v2, plain predict, feedback) to a healthy replica and answers the probes,
`/metrics` and `/admin/*` itself. With `gateway.require_auth` on, the data path needs an
API key with the `predict` (or, for feedback, `feedback`) scope as `Authorization: Bearer
sk_...` or `x-api-key`; off, it needs none. `/admin/*` always needs the supervisor's token in
`{ADMIN_TOKEN_HEADER}` or a key with the `admin` scope. Errors are
`{{"error", "message", "hint"?}}`; a replica's 4xx passes through unchanged. Limits answer
before any route: 414 (URL), 431 (headers), 408 (slow request) and 413 (body)."""


@cache
def document() -> dict[str, Any]:
    """The document (built on first use, then the same object)."""
    forwarded = [op.adding(*FORWARDING_ERRORS) for op in DATA_PATH]
    admin = [replace(op, security=({"adminToken": []}, *_KEY)) for op in ADMIN]
    return build_document(
        title="Stratum gateway", description=DESCRIPTION, version=__version__,
        operations=[*forwarded, LIVE, READY, replace(METRICS, secured=False), *admin,
                    OPENAPI],
        path_params=PATH_PARAMS,
        schemes={
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "an API key (sk_...); see `stratum keys create`"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                       "description": "the same API key in another header"},
            "adminToken": {"type": "apiKey", "in": "header", "name": ADMIN_TOKEN_HEADER,
                           "description": "the token the supervisor started this gateway "
                                          "with"},
        },
        # The empty requirement: keys are optional unless gateway.require_auth is on.
        security=[*_KEY, {}])


@cache
def document_json() -> bytes:
    return orjson.dumps(document())
