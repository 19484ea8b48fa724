"""When to try an inference again, and how much retrying the gateway allows itself.

Inference is idempotent, so a request that failed at the connection level, or that a
replica answered with a 5xx (a crash, a draining replica's 503), is sent to another
replica. Retries are bounded per request (``retries``) and overall by a budget, as in
Finagle and Envoy: each request deposits ``ratio`` of a token, each retry spends one, and a
small floor per second keeps retries possible at low traffic. When a whole replica set is
failing, the budget stops the gateway from multiplying the load it sends to it.
"""

from __future__ import annotations

import time

RETRY_STATUSES = frozenset((500, 502, 503, 504))


def should_retry(status: int) -> bool:
    return status in RETRY_STATUSES


class RetryBudget:
    """A token bucket filled by traffic (``ratio`` per request) and a floor (``min_per_s``).

    >>> b = RetryBudget(ratio=0.5, min_per_s=0.0)
    >>> b.can_retry()
    False
    >>> b.on_request(); b.on_request(); b.can_retry()
    True
    """

    def __init__(self, ratio: float, min_per_s: float = 10.0, cap: float = 100.0) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.cap = cap
        self.tokens = 0.0
        self._last = time.monotonic()
        self.spent = 0
        self.refused = 0

    def on_request(self) -> None:
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def can_retry(self) -> bool:
        """Spend one token if there is one; False means the budget is exhausted."""
        if self.min_per_s:
            now = time.monotonic()
            self.tokens = min(self.cap, self.tokens + (now - self._last) * self.min_per_s)
            self._last = now
        if self.tokens >= 1.0 - 1e-9:  # ten deposits of 0.1 must make a token
            self.tokens -= 1.0
            self.spent += 1
            return True
        self.refused += 1
        return False
