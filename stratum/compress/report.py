"""The result of ``compress``: every version's figures, ratios to the parent, the gate.

A child's report (``report.json`` beside its weights) holds its own figures, its direct
parent's and the root's (the version ``compress`` was given), measured in one interleaved
timing run, plus the pass, its parameters and its checks (export error, sparsity...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stratum.compress.gate import Gate
from stratum.compress.measure import Figures

REPORT_FILE = "report.json"


@dataclass
class Step:
    """One registered child: the pass that made it and what it measured."""

    made_by: str
    params: dict[str, Any]
    checks: dict[str, Any]
    figures: Figures
    parent: Figures
    gate: Gate
    report_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.figures.version, "pass": self.made_by, "params": self.params,
                "checks": self.checks, "child": self.figures.to_dict(),
                "parent": self.parent.to_dict(), "gate": self.gate.to_dict(),
                "report": self.report_path}


@dataclass
class CompressResult:
    name: str
    root: Figures
    steps: list[Step] = field(default_factory=list)
    alias: str | None = None  # the alias asked for
    alias_moved: bool = False

    @property
    def final(self) -> Step:
        return self.steps[-1]

    @property
    def passed(self) -> bool:
        return self.final.gate.passed

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "parent": self.root.to_dict(),
                "children": [s.to_dict() for s in self.steps], "alias": self.alias,
                "alias_moved": self.alias_moved, "passed": self.passed,
                "gate": self.final.gate.to_dict()}

    def rows(self) -> list[dict[str, Any]]:
        """The table: one row per version, ratios to the root (same runtime, same run)."""
        out = [_row(self.root, self.root)]
        out += [_row(s.figures, self.root) for s in self.steps]
        return out


def _row(f: Figures, root: Figures) -> dict[str, Any]:
    return {**f.to_dict(),
            "drop_points": round((root.score - f.score) * 100, 3),
            "size_ratio": root.bytes / max(f.bytes, 1),  # >1: smaller
            "p50_speedup": root.p50_ms / max(f.p50_ms, 1e-9),  # >1: faster
            "throughput_ratio": f.samples_per_s / max(root.samples_per_s, 1e-9)}


def child_report(step: Step, root: Figures, name: str) -> dict[str, Any]:
    """The document stored with a child."""
    return {"model": name, **step.to_dict(), "root": root.to_dict(),
            "vs_parent": _row(step.figures, step.parent),
            "vs_root": _row(step.figures, root)}


__all__ = ["REPORT_FILE", "CompressResult", "Step", "child_report"]
