"""OpenAPI 3.1 documents from a table of operations and the pydantic models of their
bodies: one builder for the replica and the gateway, whose routers are hand-made ASGI
(``build_document``). The control plane's FastAPI writes its own paths and request bodies;
``complete_document`` gives them the answers, errors and security the same way.

An operation names the errors it can answer with as ``StratumError`` classes. Each class
carries its HTTP status and its docstring says when it happens, so the statuses a document
lists are the ones the code raises, each described once, in ``stratum/errors.py``.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from stratum.errors import StratumError

JSON_MEDIA = "application/json"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_REF = "#/components/schemas/{model}"

# A media type's schema: a pydantic model (put in components) or a plain JSON schema.
Schema = type[BaseModel] | dict[str, Any]


class ErrorBody(BaseModel):
    """What every Stratum server answers an error with: ``StratumError.to_dict()``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "error": "UnknownModelError", "message": "model 'mnsit' is not served here",
        "hint": "this replica serves 'mnist'"}]})

    error: str = Field(description="the error's class in stratum/errors.py, e.g. "
                                   "UnknownModelError; InternalError for a bug (500)")
    message: str = Field(description="what went wrong, naming the field, row or version")
    hint: str | None = Field(None, description="what to do about it, when there is advice")


@dataclass(frozen=True)
class Reply:
    """A non-error answer: its description and body per media type."""

    description: str
    content: Mapping[str, Schema] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # header name → description


@dataclass(frozen=True)
class Param:
    """A parameter: a header or query one of an operation, or a path one of a document."""

    name: str
    where: Literal["header", "query", "path"]
    description: str
    schema: Mapping[str, Any]
    required: bool = False


@dataclass(frozen=True)
class Body:
    content: Mapping[str, Schema]
    description: str = ""
    required: bool = True


@dataclass(frozen=True)
class Operation:
    method: str  # upper case, as routers see it
    path: str  # a template: "/v2/models/{name}/infer"
    summary: str
    tag: str
    replies: Mapping[int, Reply]
    errors: tuple[type[StratumError], ...] = ()
    body: Body | None = None
    params: tuple[Param, ...] = ()
    secured: bool = True  # False: open to anyone (health probes, this document)
    # Who may call it when secured; None: the document's default requirements.
    security: tuple[Mapping[str, list[str]], ...] | None = None

    def adding(self, *errors: type[StratumError]) -> Operation:
        """This operation with more possible errors (those a server in front adds)."""
        return replace(self, errors=(*self.errors, *(e for e in errors if e not in self.errors)))

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path


def describe_error(cls: type[StratumError]) -> str:
    """One line for a response description: the class and its docstring's first line."""
    doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    return f"`{cls.__name__}`: {doc}" if doc else f"`{cls.__name__}`"


def error_statuses(errors: Iterable[type[StratumError]]) -> dict[int, list[type[StratumError]]]:
    """The errors grouped by the status they answer with."""
    out: dict[int, list[type[StratumError]]] = {}
    for cls in errors:
        out.setdefault(cls.http_status, []).append(cls)
    return dict(sorted(out.items()))


def build_document(
    *, title: str, description: str, version: str, operations: Sequence[Operation],
    schemes: Mapping[str, Mapping[str, Any]], security: Sequence[Mapping[str, list[str]]],
    path_params: Mapping[str, Param],
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``; ``security`` applies to every secured
    operation (an empty requirement in it makes the credential optional)."""
    models = _models(operations)
    refs, defs = models_json_schema(models, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item = paths.setdefault(op.path, {})
        item[op.method.lower()] = _operation(op, refs, security, path_params)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}),
                       "securitySchemes": {k: dict(v) for k, v in schemes.items()}},
    }


def complete_document(
    doc: Mapping[str, Any], operations: Sequence[Operation],
    schemes: Mapping[str, Mapping[str, Any]], security: Sequence[Mapping[str, list[str]]],
) -> dict[str, Any]:
    """A copy of ``doc`` (a framework's: FastAPI's) whose operations get the responses,
    tags and security of ``operations``; its parameters and request bodies are kept.
    Schemas nothing refers to any more are dropped."""
    refs, defs = models_json_schema(_models(operations), ref_template=_REF)
    out = copy.deepcopy(dict(doc))
    components = out.setdefault("components", {})
    components.setdefault("schemas", {}).update(defs.get("$defs", {}))
    components["securitySchemes"] = {k: dict(v) for k, v in schemes.items()}
    for op in operations:
        item = out.get("paths", {}).get(op.path, {}).get(op.method.lower())
        if item is None:  # described but not served: the route check names it
            continue
        item["tags"] = [op.tag]
        item["responses"] = _responses(op, refs)
        item["security"] = _security(op, security)
    components["schemas"] = _referenced(out, components["schemas"])
    return out


def operations_in(doc: Mapping[str, Any]) -> set[tuple[str, str]]:
    """Every ``(METHOD, path template)`` a document describes."""
    return {(method.upper(), path) for path, item in doc.get("paths", {}).items()
            for method in item if method in METHODS}


def operation_id(method: str, path: str) -> str:
    """``POST /v1/models/{name}:predict`` → ``post_v1_models_name_predict``."""
    return (method.lower() + "_" + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")).rstrip("_")


# -- internals ------------------------------------------------------------------------------
_Key = tuple[Any, JsonSchemaMode]  # (a pydantic model, mode): models_json_schema's keys


def _models(operations: Sequence[Operation]) -> list[_Key]:
    seen: dict[_Key, None] = {(ErrorBody, "serialization"): None}
    for op in operations:
        if op.body is not None:
            for s in op.body.content.values():
                if not isinstance(s, dict):
                    seen[(s, "validation")] = None
        for reply in op.replies.values():
            for s in reply.content.values():
                if not isinstance(s, dict):
                    seen[(s, "serialization")] = None
    return list(seen)


def _schema(s: Schema, mode: JsonSchemaMode, refs: Mapping[_Key, Any]) -> dict[str, Any]:
    return dict(s) if isinstance(s, dict) else dict(refs[(s, mode)])


def _operation(op: Operation, refs: Mapping[_Key, Any],
               security: Sequence[Mapping[str, list[str]]],
               path_params: Mapping[str, Param]) -> dict[str, Any]:
    params = [path_params[name] for name in re.findall(r"{(\w+)}", op.path)]
    out: dict[str, Any] = {
        "operationId": operation_id(op.method, op.path), "summary": op.summary,
        "tags": [op.tag],
        "parameters": [{"name": p.name, "in": p.where, "description": p.description,
                        "required": p.required or p.where == "path", "schema": dict(p.schema)}
                       for p in (*params, *op.params)],
        "security": _security(op, security),
        "responses": _responses(op, refs),
    }
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body.required, "description": op.body.description,
            "content": {media: {"schema": _schema(s, "validation", refs)}
                        for media, s in op.body.content.items()}}
    return out


def _security(op: Operation, default: Sequence[Mapping[str, list[str]]]
              ) -> list[dict[str, list[str]]]:
    if not op.secured:
        return []
    return [dict(s) for s in (default if op.security is None else op.security)]


def _referenced(doc: Mapping[str, Any], schemas: Mapping[str, Any]) -> dict[str, Any]:
    """The schemas ``doc`` refers to outside ``components.schemas``, and theirs in turn."""
    rest = {k: v for k, v in doc.items() if k != "components"}
    todo = set(re.findall(r"#/components/schemas/([^\"]+)", json.dumps(rest)))
    keep: set[str] = set()
    while todo:
        name = todo.pop()
        if name in keep or name not in schemas:
            continue
        keep.add(name)
        todo |= set(re.findall(r"#/components/schemas/([^\"]+)", json.dumps(schemas[name])))
    return {k: v for k, v in schemas.items() if k in keep}


def _responses(op: Operation, refs: Mapping[_Key, Any]) -> dict[str, Any]:
    errors = error_statuses(op.errors)
    error_ref = dict(refs[(ErrorBody, "serialization")])
    out: dict[str, Any] = {}
    for status in sorted({*op.replies, *errors}):
        reply = op.replies.get(status)
        lines = [reply.description] if reply else []
        lines += [describe_error(cls) for cls in errors.get(status, ())]
        content: dict[str, Any] = {}
        if reply is not None:
            content = {media: {"schema": _schema(s, "serialization", refs)}
                       for media, s in reply.content.items()}
        if status in errors:
            mine = content.get(JSON_MEDIA)
            content[JSON_MEDIA] = {"schema": error_ref if mine is None else
                                   {"anyOf": [mine["schema"], error_ref]}}
        answer: dict[str, Any] = {"description": " ".join(lines), "content": content}
        if reply is not None and reply.headers:
            answer["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                                 for name, text in reply.headers.items()}
        out[str(status)] = answer
    return out
