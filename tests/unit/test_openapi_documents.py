"""Each server's /openapi.json against the routes it really has: the replica's router, the
gateway's local table plus what it forwards, the control plane's FastAPI routes. Nothing
is listed by hand here: a route added without its description (or a description left
behind by a removed route) fails, naming it. Each document is also checked by an OpenAPI
3.1 validator (openapi-spec-validator, which schemathesis brings)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from openapi_spec_validator import validate

import stratum.serve.app as replica_app
from stratum.config import Settings
from stratum.control import openapi as control_openapi
from stratum.control.api import create_app
from stratum.errors import StratumError, UnknownModelError
from stratum.gateway import Gateway, GroupSpec, PoolSpec, RoutesSpec
from stratum.gateway import openapi as gateway_openapi
from stratum.openapi import ErrorBody, operations_in
from stratum.openapi.dataplane import DATA_PATH, MAX_FEEDBACK_ITEMS
from stratum.serve import openapi as replica_openapi
from stratum.serve.app import Replica
from stratum.serve.feedback import MAX_ITEMS
from stratum.store import Store
from tests.services import free_port


def _open_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """The operations a document says need no credential."""
    return {(m.upper(), p) for p, item in doc["paths"].items() for m, op in item.items()
            if op["security"] == []}


def _sample(template: str) -> str:
    return re.sub(r"{(\w+)}", lambda m: "1" if m.group(1) == "version" else "m", template)


def test_the_replica_document_is_its_router(settings: Settings, store: Store) -> None:
    replica = Replica(settings, store, "m", secret="s" * 32)
    try:
        served = {(r.method, r.template) for r in replica.router.routes}
    finally:
        replica.executor.shutdown()
    doc = replica_openapi.document()
    assert served == operations_in(doc), (
        f"served, not described: {sorted(served - operations_in(doc))}; "
        f"described, not served: {sorted(operations_in(doc) - served)}")
    # What the document calls open is what the replica lets through without its secret.
    assert {p for _, p in _open_operations(doc)} == replica_app._OPEN
    validate(doc)


def test_the_gateway_document_is_its_local_table_and_the_data_path(settings: Settings) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = Gateway(settings, RoutesSpec(deployments={"m": PoolSpec(groups=[
        GroupSpec(replicas=[dead])])}))
    doc = gateway_openapi.document()
    local = set(gw.local.table)
    forwarded = {op.key for op in DATA_PATH}
    assert local | forwarded == operations_in(doc)
    assert not local & forwarded
    # Local routes outside /admin/ are answered before admission: the open ones.
    assert {k for k in local if not k[1].startswith("/admin/")} == _open_operations(doc)

    async def status(method: str, path: str) -> tuple[int, dict[str, Any]]:
        transport = httpx.ASGITransport(app=gw)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            r = await client.request(method, path, json={} if method != "GET" else None)
            return r.status_code, r.json() if "json" in r.headers["content-type"] else {}

    # A documented data-path operation is forwarded to model m's replicas: with its one
    # replica down the gateway says no replica could answer; for a model not deployed
    # here it answers 404 itself.
    for method, template in sorted(forwarded):
        code, body = asyncio.run(status(method, _sample(template)))
        assert code == 503 and "no replica could answer" in body["message"], (template, body)
    assert asyncio.run(status("POST", "/v1/models/other:predict"))[0] == 404
    # A local path asked with another method is a 405 (401 first on /admin/*).
    assert asyncio.run(status("POST", "/v2/health/live"))[0] == 405
    assert asyncio.run(status("DELETE", "/admin/routes"))[0] == 401
    validate(doc)


def test_the_replica_and_gateway_describe_the_same_data_path() -> None:
    replica, gateway = replica_openapi.document(), gateway_openapi.document()
    for method, path in (op.key for op in DATA_PATH):
        ours, theirs = (d["paths"][path][method.lower()] for d in (replica, gateway))
        assert ours.get("requestBody") == theirs.get("requestBody"), path
        assert ours["responses"]["200"] == theirs["responses"]["200"], path
        # The gateway answers whatever the replica does, and adds its own.
        assert set(ours["responses"]) - {"401"} <= set(theirs["responses"]), path


def test_the_control_document_is_its_fastapi_routes(settings: Settings) -> None:
    app = create_app(settings)
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    served = {(m, r.path) for r in routes for m in r.methods or ()}
    doc = app.openapi()
    assert served == operations_in(doc) == {op.key for op in control_openapi.OPERATIONS}
    # The admin guard is a dependency on every route but the open ones.
    unguarded = {(m, r.path) for r in routes for m in r.methods or () if not r.dependencies}
    assert unguarded == _open_operations(doc) == {("GET", "/health"), ("GET", "/metrics")}
    assert app.openapi() is doc  # built once
    validate(doc)


@pytest.mark.parametrize("document", [replica_openapi.document, gateway_openapi.document])
def test_documents_are_built_once_and_hold_no_secret(document: Any) -> None:
    assert document() is document()
    text = str(document())
    assert "sk_" not in text.replace("sk_...", "") and "***" not in text.replace('"***"', "")


def test_the_error_body_is_what_errors_turn_into() -> None:
    for err in (UnknownModelError("no", hint="try"), StratumError("bare")):
        assert ErrorBody.model_validate(err.to_dict()).model_dump(exclude_none=True) \
            == err.to_dict()
    assert MAX_FEEDBACK_ITEMS == MAX_ITEMS
