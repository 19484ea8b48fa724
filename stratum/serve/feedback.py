"""Feedback intake: ``(request_id, label)`` pairs checked against the request log and put
on the durable queue, where the online learner consumes them.

The queue's producer-side dedupe key is ``MODEL:REQUEST_ID``, so the same feedback sent
twice (a client retry, two gateways) is enqueued once; the learner's apply-once claims
make a redelivered message count once too.

>>> parse_feedback(b'{"request_id": "r1", "label": 7}')
[FeedbackItem(request_id='r1', label=7)]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from stratum.errors import BadRequestError, NotFoundError, SignatureError
from stratum.queue import Queue
from stratum.store.requests import LoggedRequest, RequestLog

# A feedback request carries at most this many items; bigger batches go in several.
MAX_ITEMS = 1000


@dataclass(frozen=True)
class FeedbackItem:
    request_id: str
    label: Any  # one label, or a list with one label per instance of the request


@dataclass(frozen=True)
class FeedbackResult:
    accepted: int  # newly enqueued
    duplicates: int  # seen before; counted once

    def to_dict(self) -> dict[str, int]:
        return {"accepted": self.accepted, "duplicates": self.duplicates}


def parse_feedback(body: bytes) -> list[FeedbackItem]:
    """``{"request_id", "label"}`` or a list of them → items; 400 naming what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from exc
    docs = doc if isinstance(doc, list) else [doc]
    if not docs:
        raise BadRequestError("send at least one {\"request_id\": ..., \"label\": ...}")
    if len(docs) > MAX_ITEMS:
        raise BadRequestError(f"{len(docs)} feedback items in one request; the limit is "
                              f"{MAX_ITEMS}", hint="send them in several requests")
    items = []
    for i, d in enumerate(docs):
        where = f"item {i}" if isinstance(doc, list) else "the body"
        if not isinstance(d, dict):
            raise BadRequestError(f"{where} must be an object with request_id and label")
        rid, label = d.get("request_id"), d.get("label")
        if not isinstance(rid, str) or not 0 < len(rid) <= 64:
            raise BadRequestError(f"{where}: request_id must be the x-request-id of a "
                                  "prediction (a string of 1-64 characters)")
        if label is None or isinstance(label, dict):
            raise BadRequestError(f"{where}: label is missing or not a value")
        items.append(FeedbackItem(rid, label))
    return items


def check_labels(item: FeedbackItem, logged: LoggedRequest, classes: Sequence[Any] | None
                 ) -> list[Any]:
    """The labels of ``item``, one per logged instance; 422 when they do not fit."""
    instances = logged.instances
    labels = item.label if isinstance(item.label, list) else [item.label]
    if len(labels) != len(instances):
        raise SignatureError(f"request {item.request_id} had {len(instances)} instance(s) but "
                             f"the feedback has {len(labels)} label(s)",
                             hint="send one label per instance, as a list")
    if classes is not None:
        known = {str(c) for c in classes}
        bad = [v for v in labels if str(v) not in known]
        if bad:
            raise SignatureError(f"label(s) {bad[:5]} of request {item.request_id} are not "
                                 f"classes of {logged.model}",
                                 hint=f"classes are {list(classes)[:20]}")
    else:
        bad = [v for v in labels if not isinstance(v, int | float) or isinstance(v, bool)]
        if bad:
            raise SignatureError(f"label(s) {bad[:5]} of request {item.request_id} are not "
                                 "numbers; this model is a regressor")
    return labels


class FeedbackIntake:
    """Validate feedback for ``model`` against the request log and enqueue it."""

    def __init__(self, model: str, log: RequestLog, queue: Queue,
                 classes: Sequence[Any] | None) -> None:
        self.model, self.log, self.queue, self.classes = model, log, queue, classes

    def lookup(self, items: Sequence[FeedbackItem]) -> dict[str, LoggedRequest]:
        return self.log.get_many([i.request_id for i in items])

    def submit(self, items: Sequence[FeedbackItem],
               logged: dict[str, LoggedRequest]) -> FeedbackResult:
        """Enqueue ``items`` (all of them known to ``logged``), or none: a 404 or 422
        names the first item that cannot be used."""
        missing = [i.request_id for i in items if i.request_id not in logged]
        if missing:
            raise NotFoundError(
                f"no logged request {missing[0]!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + " for feedback: unknown, not sampled, or older than the log retention",
                hint="send the x-request-id header of a prediction from this deployment")
        payloads = []
        for item in items:
            row = logged[item.request_id]
            if row.model != self.model:
                raise NotFoundError(f"request {item.request_id} was served by {row.model}, "
                                    f"not {self.model}")
            labels = check_labels(item, row, self.classes)
            payloads.append((item.request_id, {
                "request_id": item.request_id, "model": self.model, "labels": labels,
                "version": row.version, "ts": time.time()}))
        accepted = sum(
            self.queue.put(p, dedupe_key=f"{self.model}:{rid}") is not None
            for rid, p in payloads)
        return FeedbackResult(accepted, len(payloads) - accepted)
