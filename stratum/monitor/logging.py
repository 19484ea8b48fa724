"""Structured JSON logs, one object per line, carrying the current request id.

Every process Stratum starts calls ``setup_logging(level, component=..., deployment=...)``
once at its start; the keyword fields (deployment, replica, model...) go on every line, and
``bind(version=3)`` changes them later (a hot swap). Bind a request id for the code that
handles one request with ``request_context(request_id)`` (a contextvar, so it follows
asyncio tasks), or pass ``extra={"request_id": rid}`` to one call; every log line inside
carries it::

    with request_context(rid):
        log.info("predicted", extra={"model": "mnist", "rows": 3})
    # {"ts": "...", "level": "INFO", "logger": "...", "msg": "predicted",
    #  "request_id": "...", "model": "mnist", "rows": 3}
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

import orjson

request_id_var: ContextVar[str | None] = ContextVar("stratum_request_id", default=None)
# What this process is (component, deployment, replica, version...): on every line.
_fields: dict[str, Any] = {}

# Attributes every LogRecord has; anything else came from ``extra=`` and is logged.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName",
}


def new_request_id() -> str:
    return uuid.uuid4().hex


def get_request_id() -> str | None:
    return request_id_var.get()


@contextmanager
def request_context(request_id: str | None = None) -> Iterator[str]:
    """Bind ``request_id`` (a new one if None) for the duration of the block."""
    rid = request_id or new_request_id()
    token = request_id_var.set(rid)
    try:
        yield rid
    finally:
        request_id_var.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str | None = None) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.component:
            out["component"] = self.component
        out.update(_fields)
        rid = request_id_var.get()
        if rid is not None:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def bind(**fields: Any) -> None:
    """Set fields every later line of this process carries (None removes one)."""
    for key, value in fields.items():
        if value is None:
            _fields.pop(key, None)
        else:
            _fields[key] = value


def setup_logging(level: str | int = "INFO", *, component: str | None = None,
                  stream: IO[str] | None = None, **fields: Any) -> None:
    """Route the root logger to one JSON handler on ``stream`` (stderr by default);
    ``fields`` (deployment, replica, model...) go on every line."""
    _fields.clear()
    bind(**fields)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    # One handler: calling again (or after basicConfig) must not duplicate lines.
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
