"""The ensemble bars over several seeds, through ``stratum.train.fit`` as the tests run it.

- soft: three digits mlps (examples/digits.yaml, 20 epochs) of run seed s (members s, s+1,
  s+2), soft voting, 2 processes; for s in --soft-seeds.
- stacking: logistic (torch) + random forest (scikit-learn) + mlp (torch) on breast_cancer
  (examples/breast_cancer.yaml), 5 folds, 2 processes; for s in --stack-seeds.

Per run: each member's accuracy and the ensemble's on the test split (and, for stacking,
out of fold over the train + validation rows), in correctly classified rows, and the
paired counts against the best member (rows only the ensemble gets right / only the
member does); then the members best on the rows held out from training (validation, or
out of fold for stacking: the member one would ship instead) and the paired counts of
the ensemble against each of them on the test split, the issue's bar.

    .venv/bin/python bench/ensemble_seeds.py [--soft-seeds 0 3 6 9 12] [--stack-seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stratum.config import load_settings  # noqa: E402
from stratum.data import ingest  # noqa: E402
from stratum.store import Store  # noqa: E402
from stratum.train import fit, parse_config  # noqa: E402

RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "soft": ("digits", {"epochs": 20, "ensemble": {"combine": "soft",
                                                   "members": [{}, {}, {}]}}),
    "stacking": ("breast_cancer", {"ensemble": {"combine": "stacking", "members": [
        {}, {"model": {"name": "random_forest"}}, {"model": {"name": "mlp"}}]}}),
}


def run(store: Store, settings: Any, kind: str, seed: int) -> str:
    dataset, change = RUNS[kind]
    doc = {**yaml.safe_load((ROOT / "examples" / f"{dataset}.yaml").read_text()), **change,
           "name": f"{kind}-{seed}", "seed": seed, "strategy": "ensemble", "workers": 2}
    t0 = time.perf_counter()
    mv = fit(parse_config(doc), settings, store=store)
    summary = store.meta.run(mv.run_id or "").summary
    rows, whole = summary["members"], summary["ensemble"]
    splits = ("cv", "test") if kind == "stacking" else ("test",)
    parts = []
    for split in splits:
        n = whole["rows"] if split == "cv" else _rows(store, dataset, split)
        right = [round(r[split]["accuracy"] * n) for r in rows]
        best = max(range(len(rows)), key=lambda i: right[i])
        paired = rows[best]["paired"][split]
        parts.append(f"{split} ({n} rows): members {right}, ensemble "
                     f"{round(whole[split]['accuracy'] * n)}; vs best member +"
                     f"{paired['only_ensemble']}/-{paired['only_member']}")
    held, picks = whole["picked"]["on"], whole["picked"]["members"]
    parts.append(f"best on {held} {[round(r[held]['accuracy'], 4) for r in rows]}: members "
                 f"{picks}, vs them on test "
                 + ", ".join(f"+{rows[i]['paired']['test']['only_ensemble']}"
                             f"/-{rows[i]['paired']['test']['only_member']}" for i in picks))
    return f"{kind} seed {seed:>2}: " + " | ".join(parts) + \
        f" ({time.perf_counter() - t0:.0f} s)"


def _rows(store: Store, dataset: str, split: str) -> int:
    from stratum.data import open_dataset

    return len(open_dataset(store, dataset).load(split)[1])  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--soft-seeds", type=int, nargs="*", default=[0, 3, 6, 9, 12, 15, 18])
    ap.add_argument("--stack-seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(home=Path(tmp) / "home")
        store = Store.open(settings)
        try:
            for name in ("digits", "breast_cancer"):
                ingest(f"builtin:{name}", name, store)
            for seed in args.soft_seeds:
                print(run(store, settings, "soft", seed), flush=True)
            for seed in args.stack_seeds:
                print(run(store, settings, "stacking", seed), flush=True)
        finally:
            store.close()


if __name__ == "__main__":
    main()
