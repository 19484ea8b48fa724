"""The promotion gate: a challenger replaces the champion only when it is better on recent
feedback, and that gain is more than noise, and it is not worse on the holdout.

"Better on the recent window" is judged on the same rows for both models (paired), with
McNemar's test: of the rows where exactly one model is right, the challenger must win
clearly more (one-sided z >= ``z_min``). A challenger fitted to noise (shuffled labels)
wins about as many such rows as it loses, so it is not promoted even when its raw accuracy
is a hair higher by chance.

>>> import numpy as np
>>> champ = np.array([1, 0, 0, 1, 0, 0, 1, 0] * 10, bool)
>>> chall = np.ones(80, bool)
>>> d = decide(champ, chall, champion_holdout=0.95, challenger_holdout=0.95)
>>> d.promote, round(d.recent_gain, 3)
(True, 0.625)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    champion_recent: float
    challenger_recent: float
    champion_holdout: float
    challenger_holdout: float
    recent_rows: int
    wins: int  # rows only the challenger got right
    losses: int  # rows only the champion got right
    z: float

    @property
    def recent_gain(self) -> float:
        return self.challenger_recent - self.champion_recent

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recent_gain": self.recent_gain}


def decide(champion_correct: np.ndarray, challenger_correct: np.ndarray, *,
           champion_holdout: float, challenger_holdout: float, tolerance: float = 0.01,
           z_min: float = 1.645, min_rows: int = 20) -> Decision:
    """Compare two models on the same recent rows (``*_correct``: per-row right/wrong) and
    on the holdout (accuracies, or any higher-is-better score)."""
    a = np.asarray(champion_correct, bool)
    b = np.asarray(challenger_correct, bool)
    if a.shape != b.shape:
        raise ValueError("both models must be scored on the same recent rows")
    n = len(a)
    wins = int(np.sum(b & ~a))
    losses = int(np.sum(a & ~b))
    z = (wins - losses) / math.sqrt(wins + losses) if wins + losses else 0.0
    champ_recent = float(a.mean()) if n else float("nan")
    chall_recent = float(b.mean()) if n else float("nan")
    if n < min_rows:
        promote, reason = False, f"only {n} recent rows to judge on (need {min_rows})"
    elif wins <= losses or z < z_min:
        promote, reason = False, (f"not better on recent feedback: {chall_recent:.3f} vs "
                                  f"{champ_recent:.3f} (wins {wins}, losses {losses}, "
                                  f"z={z:.2f} < {z_min})")
    elif challenger_holdout < champion_holdout - tolerance:
        promote, reason = False, (f"worse on the holdout: {challenger_holdout:.3f} vs "
                                  f"{champion_holdout:.3f} (tolerance {tolerance})")
    else:
        promote, reason = True, (f"better on recent feedback ({chall_recent:.3f} vs "
                                 f"{champ_recent:.3f}, z={z:.2f}) and holdout "
                                 f"{challenger_holdout:.3f} vs {champion_holdout:.3f}")
    return Decision(promote, reason, champ_recent, chall_recent, champion_holdout,
                    challenger_holdout, n, wins, losses, z)
