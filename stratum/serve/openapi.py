"""The replica's OpenAPI document, served at ``GET /openapi.json`` without the secret.

It is the data path every replica serves (``stratum.openapi.dataplane``), the probes and
the admin routes the control plane calls, built once per process from the models below.
It is the same for every replica of every model (the model name is a path parameter),
so it tells a reader nothing that the source does not: no names, versions or secrets.
``tests/unit/test_openapi_documents.py`` checks it against ``Replica.router``'s routes.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from stratum import __version__
from stratum.asgi import Request, Response
from stratum.errors import AuthError, ConflictError, NotFoundError, ServingError
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
from stratum.security.tokens import REPLICA_SECRET_HEADER

if TYPE_CHECKING:
    from stratum.serve.app import Replica

_CLOSED = ConfigDict(extra="forbid")


class RuntimeInfo(BaseModel):
    model_config = _CLOSED
    framework: str
    backend: str
    fallback_reason: str | None = Field(None, description="why not ONNX Runtime, if not")
    device: str | None = Field(None, description="cpu or cuda:N, for a torch net run eagerly")
    bf16: bool | None = Field(None, description="whether its forward pass autocasts to bf16")


class MadeBy(BaseModel):
    model_config = _CLOSED
    pass_: str = Field(alias="pass", description="export-onnx, int8-dynamic, int8-static, "
                       "prune, prune-structured or distill")
    params: dict[str, Any]
    parent_version: int | None
    root_version: int | None = Field(description="the version `stratum compress` was given")
    report: str | None = Field(description="the report's file beside the weights")


class ReplicaInfo(BaseModel):
    model_config = _CLOSED
    name: str = Field(description="the deployment")
    model: str
    version: int | None
    pid: int
    inflight: int
    ready: bool
    draining: bool
    queue_depth: int
    runtime: RuntimeInfo | None
    made_by: MadeBy | None = Field(
        description="the compression pass that made the version served (its lineage); "
                    "null for a version that training made")


class SwapRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"ref": "production"}]})
    ref: Annotated[str, Field(min_length=1)] | int = Field(
        description="a version, an alias or NAME@REF of this model")


class SwapResult(BaseModel):
    model_config = _CLOSED
    name: str
    version: int
    previous: int | None


class DrainResult(BaseModel):
    model_config = _CLOSED
    drained: bool = Field(description="false if requests were still running at the timeout")
    inflight: int


ADMIN: tuple[Operation, ...] = (
    Operation("GET", "/admin/info", "What this replica serves and how busy it is", "admin",
              {200: Reply("its state", {JSON_MEDIA: ReplicaInfo})}),
    Operation("POST", "/admin/swap", "Hot-swap to another version of the model", "admin",
              {200: Reply("swapped; the old version finishes its requests",
                          {JSON_MEDIA: SwapResult})},
              (*BODY_ERRORS, NotFoundError, ConflictError, ServingError),
              Body({JSON_MEDIA: SwapRequest})),
    Operation("POST", "/admin/drain", "Stop taking inference (before a stop)", "admin",
              {200: Reply("drained, or the drain timeout passed", {JSON_MEDIA: DrainResult})}),
)

DESCRIPTION = f"""One Stratum replica: one model, one version at a time (hot-swappable).
Every route but the two health probes, `/metrics` and this document needs the deployment's
secret in `{REPLICA_SECRET_HEADER}` (401 without it) unless the replica was started with
`--insecure`; clients reach replicas through their gateway, which adds it. Errors are
`{{"error", "message", "hint"?}}`. Limits answer before any route: 414 (URL), 431
(headers), 408 (slow request) and 413 (body), then the connection closes."""


@cache
def document() -> dict[str, Any]:
    """The document (built on first use, then the same object)."""
    ops = [op.adding(AuthError) if op.secured else op
           for op in (*DATA_PATH, LIVE, READY, METRICS, *ADMIN, OPENAPI)]
    return build_document(
        title="Stratum replica", description=DESCRIPTION, version=__version__,
        operations=ops, path_params=PATH_PARAMS,
        schemes={"replicaSecret": {"type": "apiKey", "in": "header",
                                   "name": REPLICA_SECRET_HEADER,
                                   "description": "the deployment's secret"}},
        security=[{"replicaSecret": []}])


@cache
def document_json() -> bytes:
    return orjson.dumps(document())


async def openapi(replica: Replica, req: Request) -> Response:
    return Response(200, document_json())
