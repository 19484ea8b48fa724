"""OpenAPI documents of Stratum's servers: the builder (``document``) and the data path
that a replica serves and its gateway forwards (``dataplane``)."""

from stratum.openapi.document import (
    ErrorBody,
    Operation,
    build_document,
    complete_document,
    operations_in,
)

__all__ = ["ErrorBody", "Operation", "build_document", "complete_document", "operations_in"]
