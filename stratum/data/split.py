"""Deterministic train/val/test assignment, stratified by class, computed while streaming.

Rows of each group (a class for classification, the whole dataset for regression) are
dealt in arrival order through a fixed pattern of ``CYCLE`` slots that interleaves the
three splits as evenly as the fractions allow (largest-remainder order). Every window of
``CYCLE`` rows of a class therefore holds exactly the wanted proportions, and the same
rows in the same order always get the same splits — no random state, no second pass.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

TRAIN, VAL, TEST = 0, 1, 2
CYCLE = 20


def split_pattern(val_fraction: float, test_fraction: float, cycle: int = CYCLE) -> np.ndarray:
    """The slot pattern: ``cycle`` split codes with the wanted proportions, interleaved.

    >>> split_pattern(0.1, 0.1, 10).tolist()
    [0, 0, 0, 1, 0, 0, 2, 0, 0, 0]
    """
    counts = np.array([1 - val_fraction - test_fraction, val_fraction, test_fraction]) * cycle
    target = np.floor(counts + 1e-9).astype(int)
    # Largest remainders get the slots that rounding left over.
    for i in np.argsort(-(counts - target), kind="stable")[: cycle - target.sum()]:
        target[i] += 1
    fracs = target / cycle
    taken = np.zeros(3)
    out = np.empty(cycle, dtype=np.int8)
    for slot in range(cycle):
        # Smooth weighted round robin: the slot goes to the split furthest behind its share.
        lag = fracs * (slot + 1) - taken
        choice = int(np.argmax(lag))
        out[slot] = choice
        taken[choice] += 1
    return out


class Splitter:
    """Assigns splits batch by batch; keeps a running count per group."""

    def __init__(self, val_fraction: float, test_fraction: float) -> None:
        self.pattern = split_pattern(val_fraction, test_fraction)
        self.seen: dict[Hashable, int] = {}

    def assign(self, groups: np.ndarray | None, n: int) -> np.ndarray:
        """Split codes for the next ``n`` rows; ``groups`` are their class labels (or None)."""
        if groups is None:
            start = self.seen.get(None, 0)
            self.seen[None] = start + n
            return self.pattern[(np.arange(start, start + n)) % len(self.pattern)]
        out = np.empty(n, dtype=np.int8)
        keys, inverse = np.unique(groups, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(keys) + 1))
        for k, key in enumerate(keys.tolist()):
            rows = order[bounds[k]:bounds[k + 1]]
            start = self.seen.get(key, 0)
            self.seen[key] = start + len(rows)
            out[rows] = self.pattern[np.arange(start, start + len(rows)) % len(self.pattern)]
        return out


__all__ = ["TEST", "TRAIN", "VAL", "Splitter", "split_pattern"]
