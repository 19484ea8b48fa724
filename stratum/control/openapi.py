"""The control plane's OpenAPI document, at ``GET /openapi.json`` without credentials.

FastAPI writes the paths, parameters and request bodies from the routes in ``api.py``;
what it cannot see is added here, with the builder the replica and the gateway use
(``stratum.openapi``): the admin credential every route but ``/health`` needs, the errors
each route answers with, and the shapes of the answers. A request FastAPI cannot validate
gets a 422, and one it cannot parse a 400, in the same ``{"error", "message", "hint"}``
shape as every other error.

The document describes routes, not state (no deployments, keys or tokens), so it is
public like the source it comes from. ``tests/unit/test_openapi_documents.py`` checks
``OPERATIONS`` against ``app.routes``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, RootModel
from starlette.exceptions import HTTPException

from stratum.control.spec import DeploymentSpec
from stratum.errors import (
    AuthError,
    BadRequestError,
    ConfigError,
    ConflictError,
    DataError,
    InvalidNameError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RequestTimeoutError,
    StratumError,
    UnsupportedMediaTypeError,
)
from stratum.openapi import ErrorBody, Operation
from stratum.openapi.dataplane import METRICS
from stratum.openapi.document import JSON_MEDIA, Reply, complete_document

_CLOSED = ConfigDict(extra="forbid")


class Health(BaseModel):
    model_config = _CLOSED
    ok: bool
    pid: int
    deployments: int = Field(description="how many the supervisor tracks")
    role: Literal["leader", "standby"] = Field(description="only the leader reconciles")
    term: int = Field(description="the leadership term this instance holds or last saw")


class DeploymentView(BaseModel):
    model_config = _CLOSED
    name: str
    generation: int = Field(description="bumped by every change of the wanted state")
    status: str
    spec: DeploymentSpec = Field(description="the wanted state")
    observed: dict[str, Any] = Field(description="what the supervisor last saw running")
    updated_at: str
    notice: str | None = Field(None, description="said when a change pinned a deployment "
                                                 "that followed an alias")


class Deleted(BaseModel):
    model_config = _CLOSED
    name: str
    deleted: bool


class EventView(BaseModel):
    model_config = _CLOSED
    id: int
    ts: str
    kind: str
    subject: str
    payload: dict[str, Any]


class Deployments(RootModel[list[DeploymentView]]):
    pass


class Events(RootModel[list[EventView]]):
    pass


class TargetGroup(BaseModel):
    model_config = _CLOSED
    targets: list[str] = Field(description="host:port of one process")
    labels: dict[str, str] = Field(description="component, deployment, replica or gateway; "
                                   "__scheme__ and __metrics_path__")


class Targets(RootModel[list[TargetGroup]]):
    pass


_STANDBY = {
    307: Reply("this instance stands by (error NotLeaderError): ask the leader, in Location "
               "(same method and body)", {JSON_MEDIA: ErrorBody}),
    503: Reply("no instance leads yet (error NoLeaderError); one takes over within seconds",
               {JSON_MEDIA: ErrorBody}),
}
_ONE = {JSON_MEDIA: DeploymentView}
_DEPLOYMENT = Reply("the deployment as stored; the supervisor converges to it", _ONE)
# Every route, its answer and the errors its handler raises; guards and validation add
# theirs in ``_completed``.
OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/health", "Liveness, open to probes", "health",
              {200: Reply("alive", {JSON_MEDIA: Health})}, secured=False),
    Operation("GET", "/deployments", "Every deployment", "deployments",
              {200: Reply("the deployments", {JSON_MEDIA: Deployments})}),
    Operation("POST", "/deployments", "Create or change a deployment", "deployments",
              {200: _DEPLOYMENT},
              (ConfigError, InvalidNameError, NotFoundError, ConflictError)),
    Operation("GET", "/deployments/{name}", "One deployment", "deployments",
              {200: Reply("the deployment", _ONE)}, (NotFoundError,)),
    Operation("DELETE", "/deployments/{name}", "Undeploy: stop its replicas and gateway",
              "deployments", {200: Reply("deleted", {JSON_MEDIA: Deleted})}, (NotFoundError,)),
    Operation("POST", "/deployments/{name}/rollback", "Go back to the previous version",
              "deployments", {200: _DEPLOYMENT}, (NotFoundError, ConflictError)),
    Operation("POST", "/deployments/{name}/scale", "Change the replica count", "deployments",
              {200: _DEPLOYMENT}, (NotFoundError,)),
    Operation("GET", "/events", "Recent events, newest first", "events",
              {200: Reply("the events", {JSON_MEDIA: Events})}),
    METRICS,
    Operation("GET", "/prometheus/targets", "Every process to scrape (Prometheus "
              "http_sd_configs)", "monitoring", {200: Reply("the targets", {JSON_MEDIA: Targets})}),
)

DESCRIPTION = """The Stratum control plane: deployments (the wanted state, which the
supervisor converges to), events, and what Prometheus scrapes. Every route but `/health`,
`/metrics` and this document needs a key with the `admin` scope, as `Authorization: Bearer
sk_...` or `x-api-key`: the home's admin token (`{home}/admin.token`) or one from
`stratum keys create NAME --scope admin`. Errors are `{"error", "message", "hint"?}`.
Limits answer before any route: 414 (URL), 431 (headers), 408 (slow request) and 413
(body)."""
_KEY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "an admin-scoped API key, e.g. the home's admin token"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
               "description": "the same key in another header"},
}


def describe_api(app: FastAPI) -> None:
    """Give ``app`` the completed document (built once, on first request) and answer its
    request validation errors in Stratum's error shape."""
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            raw = get_openapi(title=app.title, version=app.version, description=DESCRIPTION,
                              routes=app.routes)
            app.openapi_schema = complete_document(raw, _completed(raw), _SCHEMES, _KEY)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _completed(raw: dict[str, Any]) -> list[Operation]:
    """``OPERATIONS`` with the errors of what runs before a handler: the admin guard, the
    body limit and FastAPI's validation (where FastAPI says it validates something)."""
    out = []
    for op in OPERATIONS:
        item = raw.get("paths", {}).get(op.path, {}).get(op.method.lower(), {})
        extra: list[type[StratumError]] = []
        if op.secured:
            extra += [AuthError, PermissionDeniedError]
        if "requestBody" in item:  # BadRequestError: a body FastAPI cannot parse
            extra += [PayloadTooLargeError, RequestTimeoutError, BadRequestError]
        if "422" in item.get("responses", {}):
            extra.append(DataError)
        if op.path != "/health":  # a standby sends the rest on (control/leading.py)
            op = replace(op, replies={**op.replies, **_STANDBY})
        out.append(op.adding(*extra))
    return out


# FastAPI's own refusals (an unparsable body, an unknown path or method) as the errors the
# other servers answer the same requests with.
_BY_STATUS: dict[int, type[StratumError]] = {
    cls.http_status: cls for cls in (BadRequestError, NotFoundError, MethodNotAllowedError,
                                     PayloadTooLargeError, UnsupportedMediaTypeError)}


async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    cls = _BY_STATUS.get(exc.status_code, StratumError)
    body = {"error": cls.__name__, "message": str(exc.detail)}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [".".join(str(p) for p in e.get("loc", ())) + ": " + str(e.get("msg", ""))
                for e in exc.errors()[:5]]
    err = DataError("invalid request: " + "; ".join(problems),
                    hint="see /openapi.json for what each route takes")
    return JSONResponse(err.to_dict(), status_code=err.http_status)
