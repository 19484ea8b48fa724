"""The data path as a document: the Open Inference Protocol v2 routes, the plain predict
route and feedback, which a replica serves and its gateway forwards unchanged, plus the
probes both answer. The bodies are pydantic models of what ``stratum.serve`` parses and
writes (``serve/oip.py``, ``serve/routes.py``, ``serve/feedback.py``); they live here, below
both servers, because the gateway describes the same routes without importing the replica.

Request models leave unknown fields allowed (the replica ignores them); response models
forbid them, so a test that checks answers against the document sees any drift.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from stratum.errors import (
    BadRequestError,
    NonFiniteOutputError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    QueueError,
    RequestTimeoutError,
    SignatureError,
    UnknownModelError,
    UnsupportedMediaTypeError,
)
from stratum.openapi.document import JSON_MEDIA, Body, Operation, Param, Reply

BINARY_MEDIA = "application/octet-stream"
TEXT_MEDIA = "text/plain"
HEADER_LENGTH = "Inference-Header-Content-Length"
# The most feedback items one request may carry (serve/feedback.py's MAX_ITEMS; a unit
# test keeps the two equal).
MAX_FEEDBACK_ITEMS = 1000
_CLOSED = ConfigDict(extra="forbid")
DATATYPES = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                    "INT64", "FP16", "FP32", "FP64"]


# -- requests --------------------------------------------------------------------------------
class InputTensor(BaseModel):
    name: str = Field(description="one input, or one per feature of a tabular model")
    datatype: DATATYPES = Field(description="BYTES is refused with a 422: models take numbers")
    shape: list[int] = Field(description="[rows, ...per-sample shape]", examples=[[1, 4]])
    data: list[float | bool | list[Any]] | None = Field(
        None, description="the values, flat (row-major) or nested; absent when "
                          "parameters.binary_data_size puts them in the binary part")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: how many bytes of the binary part are this "
                          "tensor's (the binary tensor extension)")


class RequestedOutput(BaseModel):
    name: str = Field(description="probabilities and label for a classifier; prediction "
                                  "for a regressor")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data: true sends this output in the binary part")


class InferRequest(BaseModel):
    """An OIP v2 inference request; as JSON, or as the first
    Inference-Header-Content-Length bytes of an application/octet-stream body."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"id": "r1", "inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]}]})

    id: str | None = Field(None, description="echoed in the response")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_output: true sends every output in the binary part")
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = Field(None, description="default: all outputs")


class PredictRequest(BaseModel):
    """The plain route's body: samples as nested numbers, or ``{feature: value}`` objects
    for a tabular model."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"instances": [[0.1, 0.2, 0.3, 0.4]]}]})

    instances: list[list[Any] | dict[str, Any]] = Field(min_length=1)


Label = float | str | bool


class FeedbackItem(BaseModel):
    request_id: str = Field(min_length=1, max_length=64,
                            description="the x-request-id of a prediction")
    label: Label | list[Label] = Field(description="the true label, or one per instance of "
                                                   "that request")


FeedbackItems = Annotated[list[FeedbackItem], Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS)]


class FeedbackRequest(RootModel[FeedbackItem | FeedbackItems]):
    """One ``{request_id, label}`` or a list of them."""


# -- responses -------------------------------------------------------------------------------
class OutputTensor(BaseModel):
    model_config = _CLOSED
    name: str
    datatype: str
    shape: list[int]
    data: list[float | str | bool] | None = Field(None, description="absent when binary")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size when binary")


class InferResponse(BaseModel):
    model_config = _CLOSED
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


class ClassPrediction(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    label: int | str = Field(alias="class")
    probabilities: list[float]


class PredictResponse(BaseModel):
    model_config = _CLOSED
    predictions: list[ClassPrediction] | list[float] | list[list[float]]
    model_version: int
    classes: list[int | str] | None = Field(None, description="a classifier's classes")


class FeedbackResult(BaseModel):
    model_config = _CLOSED
    accepted: int = Field(description="newly queued for the online learner")
    duplicates: int = Field(description="seen before; counted once")


class TensorMetadata(BaseModel):
    model_config = _CLOSED
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for the batch dimension")


class ModelMetadata(BaseModel):
    model_config = _CLOSED
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = Field(None, description="feature_names, if tabular")


class ServerMetadata(BaseModel):
    model_config = _CLOSED
    name: str
    version: str
    extensions: list[str]


class ModelReady(BaseModel):
    model_config = _CLOSED
    name: str
    ready: bool


class Live(BaseModel):
    model_config = _CLOSED
    live: bool


class Ready(BaseModel):
    model_config = _CLOSED
    ready: bool


# -- operations ------------------------------------------------------------------------------
PATH_PARAMS = {
    "name": Param("name", "path", "the model (or deployment) name",
                  {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}),
    "version": Param("version", "path", "a version number, optionally with a v: 3 or v3",
                     {"type": "string", "pattern": "^v?[0-9]{1,9}$"}),
}
_HEADER_LENGTH = Param(HEADER_LENGTH, "header", "the length of the JSON header at the start "
                       "of an application/octet-stream body (binary tensor extension)",
                       {"type": "string", "pattern": "^[0-9]{1,9}$"})
# What any route with a JSON body can answer before its handler has a say.
BODY_ERRORS = (PayloadTooLargeError, RequestTimeoutError, BadRequestError,
               UnsupportedMediaTypeError)
_INFER = (*BODY_ERRORS, UnknownModelError, SignatureError, NonFiniteOutputError, NotReadyError)
_INFERRED = Reply("the outputs; application/octet-stream when binary outputs were asked for",
                  {JSON_MEDIA: InferResponse, BINARY_MEDIA: {"type": "string",
                                                             "format": "binary"}},
                  {HEADER_LENGTH: "the JSON header's length, with binary outputs"})
_INFER_BODY = Body({JSON_MEDIA: InferRequest, BINARY_MEDIA: {"type": "string",
                                                             "format": "binary"}},
                   "JSON, or the binary tensor extension: a JSON header of "
                   f"{HEADER_LENGTH} bytes followed by the tensors' raw little-endian bytes")


def _infer(path: str) -> Operation:
    return Operation("POST", path, "OIP v2 inference", "inference", {200: _INFERRED}, _INFER,
                     _INFER_BODY, (_HEADER_LENGTH,))


def _metadata(path: str) -> Operation:
    return Operation("GET", path, "OIP v2 model metadata of the version served", "metadata",
                     {200: Reply("the model's inputs and outputs",
                                 {JSON_MEDIA: ModelMetadata})},
                     (UnknownModelError, NotReadyError))


def _model_ready(path: str) -> Operation:
    answer = {JSON_MEDIA: ModelReady}
    return Operation("GET", path, "OIP v2 model readiness", "health",
                     {200: Reply("ready", answer), 503: Reply("not ready (yet)", answer)},
                     (UnknownModelError, NotReadyError))


# What a replica serves and a gateway forwards, in the replica's route order.
DATA_PATH: tuple[Operation, ...] = (
    _infer("/v2/models/{name}/infer"),
    Operation("POST", "/v1/models/{name}:predict", "Predict from plain JSON instances",
              "inference",
              {200: Reply("one prediction per instance", {JSON_MEDIA: PredictResponse})},
              _INFER, Body({JSON_MEDIA: PredictRequest})),
    _infer("/v2/models/{name}/versions/{version}/infer"),
    Operation("GET", "/v2", "OIP v2 server metadata", "metadata",
              {200: Reply("the server's name, version and extensions",
                          {JSON_MEDIA: ServerMetadata})}),
    _metadata("/v2/models/{name}"),
    _metadata("/v2/models/{name}/versions/{version}"),
    _model_ready("/v2/models/{name}/ready"),
    _model_ready("/v2/models/{name}/versions/{version}/ready"),
    Operation("POST", "/v1/models/{name}/feedback",
              "Labels for earlier predictions, queued for the online learner", "feedback",
              {200: Reply("how many were queued", {JSON_MEDIA: FeedbackResult})},
              (*BODY_ERRORS, UnknownModelError, NotFoundError, SignatureError, NotReadyError,
               QueueError),
              Body({JSON_MEDIA: FeedbackRequest})),
)

LIVE = Operation("GET", "/v2/health/live", "Liveness: the process answers", "health",
                 {200: Reply("alive", {JSON_MEDIA: Live})}, secured=False)
READY = Operation("GET", "/v2/health/ready", "Readiness: it can serve now", "health",
                  {200: Reply("ready", {JSON_MEDIA: Ready}),
                   503: Reply("not ready", {JSON_MEDIA: Ready})}, secured=False)
METRICS = Operation("GET", "/metrics", "Prometheus metrics (open, as on every Stratum "
                    "process: counters need no secret)", "monitoring",
                    {200: Reply("the text exposition format",
                                {TEXT_MEDIA: {"type": "string"}})}, secured=False)
OPENAPI = Operation("GET", "/openapi.json", "This document", "meta",
                    {200: Reply("the OpenAPI 3.1 document; it holds no secrets",
                                {JSON_MEDIA: {"type": "object"}})}, secured=False)
