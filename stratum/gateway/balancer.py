"""Choosing a replica within one version's group.

Three policies behind one call, ``pick(candidates, key)``: least outstanding requests
(default; adapts to a slow or busy replica without any tuning), round robin, and
consistent hashing on a request header (the same session keeps the same replica while the
replica set changes only by the replicas that came or went).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Sequence
from typing import Protocol

from stratum.gateway.upstream import Upstream

POLICIES = ("least_outstanding", "round_robin", "consistent_hash")


class Balancer(Protocol):
    def pick(self, candidates: Sequence[Upstream], key: bytes | None) -> Upstream:
        """One of ``candidates`` (never empty)."""
        ...


class LeastOutstanding:
    """Fewest requests in flight; ties rotate so an idle set still spreads load."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def pick(self, candidates: Sequence[Upstream], key: bytes | None) -> Upstream:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        start = next(self._turn) % n
        best = candidates[start]
        for i in range(1, n):
            c = candidates[(start + i) % n]
            if c.outstanding < best.outstanding:
                best = c
        return best


class RoundRobin:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def pick(self, candidates: Sequence[Upstream], key: bytes | None) -> Upstream:
        return candidates[next(self._turn) % len(candidates)]


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class ConsistentHash:
    """A hash ring with virtual nodes over the candidates' URLs.

    The ring is rebuilt only when the candidate set changes (ejection, a route update);
    a request without the key falls back to least outstanding.
    """

    def __init__(self, vnodes: int = 64) -> None:
        self.vnodes = vnodes
        self._members: tuple[str, ...] = ()
        self._points: list[int] = []
        self._owners: list[str] = []
        self._fallback = LeastOutstanding()

    def _build(self, urls: tuple[str, ...]) -> None:
        ring = sorted((_hash(f"{u}#{i}".encode()), u) for u in urls for i in range(self.vnodes))
        self._points = [p for p, _ in ring]
        self._owners = [u for _, u in ring]
        self._members = urls

    def pick(self, candidates: Sequence[Upstream], key: bytes | None) -> Upstream:
        if key is None:
            return self._fallback.pick(candidates, None)
        urls = tuple(sorted(c.url for c in candidates))
        if urls != self._members:
            self._build(urls)
        i = bisect.bisect(self._points, _hash(key)) % len(self._points)
        owner = self._owners[i]
        for c in candidates:
            if c.url == owner:
                return c
        return candidates[0]  # unreachable: the ring is built from the candidates


def make_balancer(policy: str) -> Balancer:
    if policy == "least_outstanding":
        return LeastOutstanding()
    if policy == "round_robin":
        return RoundRobin()
    if policy == "consistent_hash":
        return ConsistentHash()
    raise ValueError(f"unknown balancing policy {policy!r}; use one of {', '.join(POLICIES)}")
