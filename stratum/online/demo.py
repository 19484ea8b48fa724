"""The closed-loop demo traffic: held-out digits as requests through the gateway, each
answered prediction followed by its true label as feedback, and after ``rotate_after``
requests the digits arrive rotated (drift), so the loop must adapt.

Used by ``stratum up --demo`` and by ``bench/loop.py``; it is a client of the public
endpoint only (HTTP), so it measures what a user would see.
"""

from __future__ import annotations

import math
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import torch

from stratum.data import open_dataset
from stratum.data.augment import rotate
from stratum.data.dataset import column_values
from stratum.store import Store


@dataclass
class DemoTick:
    """The state after each request, for a live display."""

    sent: int
    rotated: bool
    version: int | None
    window_accuracy: float | None  # over the last ``window`` answers
    versions_seen: list[int]


@dataclass
class DemoResult:
    sent: int = 0
    errors: int = 0
    # Accuracy per block of ``block`` requests: (first request index, rotated?, accuracy).
    blocks: list[tuple[int, bool, float]] = field(default_factory=list)
    versions: list[tuple[int, int]] = field(default_factory=list)  # (request index, version)
    feedback_sent: int = 0
    feedback_at: dict[str, float] = field(default_factory=dict)  # request id → posted (mono)
    first_served: dict[int, float] = field(default_factory=dict)  # version → first answer

    def live_latency(self, version: int, last_request: str) -> float | None:
        """Seconds from posting the feedback ``last_request`` to the first answer by
        ``version`` (or a later one)."""
        posted = self.feedback_at.get(last_request)
        served = [t for v, t in self.first_served.items() if v >= version]
        return min(served) - posted if posted is not None and served else None


def digits(store: Store, dataset: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Raw images ``(n, side, side)`` float32 and their labels. The demo streams the
    training split: the test split is the learner's holdout and must stay unseen."""
    ds = open_dataset(store, dataset)
    table = ds.load_table(split)  # type: ignore[arg-type]
    feature = ds.feature_names[0]
    x = column_values(table[feature]).astype(np.float32)
    side = math.isqrt(len(x[0]))
    y = table[ds.target].to_numpy(zero_copy_only=False)
    return x.reshape(len(x), side, side), np.asarray(y)


def rotated(images: np.ndarray, low: float, high: float, seed: int = 1) -> np.ndarray:
    """Each image rotated by a random angle in ±[low, high] degrees."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(low, high, len(images)) * rng.choice([-1.0, 1.0], len(images))
    x = torch.from_numpy(images[:, None])
    return rotate(x, torch.from_numpy(angles.astype(np.float32)))[:, 0].numpy()


def stream(url: str, model: str, images: np.ndarray, labels: np.ndarray, *,
           requests: int, rotate_after: int | None = None, angles: tuple[float, float] = (30, 45),
           feedback: bool = True, block: int = 200, window: int = 200,
           headers: dict[str, str] | None = None, should_stop: Callable[[], bool] = lambda: False,
           on_tick: Callable[[DemoTick], None] | None = None,
           verify: ssl.SSLContext | bool = True) -> DemoResult:
    """Send ``requests`` single-digit predictions (cycling through ``images``), each
    followed by its label as feedback; return per-block accuracy and versions seen."""
    turned = rotated(images, *angles) if rotate_after is not None else images
    result = DemoResult()
    recent: deque[bool] = deque(maxlen=window)
    block_hits: list[bool] = []
    version: int | None = None
    seen: list[int] = []
    with httpx.Client(base_url=url, timeout=30.0, headers=headers or {},
                      verify=verify) as client:
        for i in range(requests):
            if should_stop():
                break
            is_rot = rotate_after is not None and i >= rotate_after
            k = i % len(images)
            img = (turned if is_rot else images)[k]
            r = client.post(f"/v1/models/{model}:predict",
                            json={"instances": [img.round(4).tolist()]})
            result.sent += 1
            if r.status_code != 200:
                result.errors += 1
                continue
            body = r.json()
            v = int(r.headers.get("x-model-version", body.get("model_version", 0)))
            result.first_served.setdefault(v, time.monotonic())
            if v != version:
                version = v
                result.versions.append((i, v))
                if v not in seen:
                    seen.append(v)
            hit = str(body["predictions"][0]["class"]) == str(labels[k])
            recent.append(hit)
            block_hits.append(hit)
            if len(block_hits) == block:
                result.blocks.append((i + 1 - block, is_rot, float(np.mean(block_hits))))
                block_hits = []
            if feedback:
                rid = r.headers["x-request-id"]
                fb = client.post(f"/v1/models/{model}/feedback", json={
                    "request_id": rid, "label": _plain(labels[k])})
                result.feedback_sent += fb.status_code == 200
                result.feedback_at[rid] = time.monotonic()
            if on_tick is not None:
                on_tick(DemoTick(i + 1, is_rot, version,
                                 float(np.mean(recent)) if recent else None, seen))
    return result


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
