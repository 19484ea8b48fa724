"""The gate: a compressed version may lose at most P points against the version it was
made from, or it gets no alias.

Points are hundredths of the metric (accuracy, or R² for a regressor): 0.978 → 0.971 is a
drop of 0.7 points. A child that breaks the gate is still registered (its report says
why it was refused, and it can be inspected or deployed by number), but the alias the
caller asked for does not move, and ``stratum compress`` exits with ``EXIT_REFUSED`` so a
pipeline can stop on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

EXIT_REFUSED = 3


@dataclass(frozen=True)
class Gate:
    drop_points: float  # positive: the child is worse
    max_drop: float | None  # None: no gate asked for
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.max_drop is None:
            return f"accuracy change {-self.drop_points:+.2f} points (no gate)"
        verdict = "passed" if self.passed else "REFUSED"
        return (f"gate {verdict}: lost {self.drop_points:.2f} points "
                f"(allowed {self.max_drop:g})")


def judge(root_score: float, child_score: float, max_drop: float | None) -> Gate:
    drop = round((root_score - child_score) * 100, 4)
    passed = max_drop is None or drop <= max_drop
    return Gate(drop_points=drop, max_drop=max_drop, passed=passed)


__all__ = ["EXIT_REFUSED", "Gate", "judge"]
