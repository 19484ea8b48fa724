"""Compression figures: every pass on the digits mlp and the mnist cnn, one table.

Trains each parent on its built-in dataset in a fresh home, then runs ``stratum.compress``
once per row. Each row's ratios are to the parent measured in the same call, on the same
runtime (ONNX Runtime, as a replica serves it), interleaved with the child; the first
rows compare the parent in eager PyTorch and in ONNX Runtime.

    .venv/bin/python bench/compress.py [--models mlp,cnn] [--timing-s 3] [--home DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from stratum.compress import Distill, Prune, Quantize, compress
from stratum.compress.measure import figures, predictor, time_both
from stratum.config import load_settings
from stratum.data import ingest, open_dataset
from stratum.models import PredictOptions, load_predictor
from stratum.store import Store, load_model
from stratum.train import fit, parse_config
from stratum.train.tune import finetune

EXAMPLES = Path(__file__).resolve().parents[1] / "stratum" / "examples"
PARENTS = {"mlp": ("digits", 15, 15), "cnn": ("mnist", 4, 8)}  # dataset, epochs, student


def cases(student_epochs: int) -> list[tuple[str, list[Any]]]:
    return [
        ("int8 dynamic", [Quantize("dynamic")]),
        ("int8 static (200 calib.)", [Quantize("static", 200)]),
        ("pruned 50%, no fine-tune", [Prune(0.5, finetune_epochs=0)]),
        ("pruned 50% + 1 epoch", [Prune(0.5, finetune_epochs=1)]),
        ("pruned 80%, no fine-tune", [Prune(0.8, finetune_epochs=0)]),
        ("pruned 80% + 1 epoch", [Prune(0.8, finetune_epochs=1)]),
        ("structured 50% + 1 epoch", [Prune(0.5, structured=True, finetune_epochs=1)]),
        (f"distilled half width ({student_epochs} ep.)",
         [Distill(width=0.5, epochs=student_epochs)]),
        ("pruned 80% + 1 ep. → int8 static", [Prune(0.8, finetune_epochs=1),
                                              Quantize("static", 200)]),
    ]


def parent_rows(store: Store, name: str, version: int, timing_s: float) -> list[str]:
    loaded = load_model(store.meta, store.artifacts, name, version)
    x, y = open_dataset(store, f"{loaded.spec.lineage.dataset}").load("test")
    eager = load_predictor(loaded, PredictOptions(torch_backend="eager"))
    ort = predictor(loaded)
    rows = [figures(loaded, "parent fp32 eager", eager, x, y),
            figures(loaded, "parent fp32 ORT", ort, x, y)]
    time_both([eager, ort], rows, x, seconds=timing_s * 2)
    base = rows[1]
    return [_line(name, r.made_by, r.to_dict(), base.to_dict()) for r in rows]


def _line(model: str, what: str, r: dict[str, Any], base: dict[str, Any]) -> str:
    return (f"| {model} | {what} | {r['score']:.4f} | {(r['score'] - base['score']) * 100:+.2f}"
            f" | {r['bytes']:,} | {base['bytes'] / r['bytes']:.2f}x | {r['p50_ms']:.3f} | "
            f"{base['p50_ms'] / r['p50_ms']:.2f}x | {r['samples_per_s']:,.0f} | "
            f"{r['samples_per_s'] / base['samples_per_s']:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--timing-s", type=float, default=3.0)
    ap.add_argument("--home", type=Path, default=None)
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="stratum-bench-compress-"))
    settings = load_settings(home=home, log_level="WARNING")
    store = Store.open(settings)
    lines = ["| model | version | accuracy | Δ pts | bytes | smaller | p50 ms @1 | faster | "
             "samples/s @32 | ratio |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model in args.models.split(","):
        dataset, epochs, student_epochs = PARENTS[model]
        if not store.meta.datasets() or dataset not in {d.name for d, *_ in
                                                          store.meta.datasets()}:
            ingest(f"builtin:{dataset}", dataset, store)
        doc = yaml.safe_load((EXAMPLES / f"{dataset}.yaml").read_text())
        t0 = time.perf_counter()
        mv = fit(parse_config({**doc, "epochs": epochs}), settings, store=store)
        print(f"{model}: parent v{mv.version} trained in {time.perf_counter() - t0:.0f}s",
              flush=True)
        lines += parent_rows(store, dataset, mv.version, args.timing_s)
        for label, passes in cases(student_epochs):
            t0 = time.perf_counter()
            r = compress(store, f"{dataset}@{mv.version}", passes, finetune=finetune,
                         timing_s=args.timing_s, cache_dir=home / "cache")
            row = r.rows()[-1]
            lines.append(_line(dataset, f"{label} (v{row['version']})", row, r.rows()[0]))
            print(lines[-1], f"[{time.perf_counter() - t0:.0f}s]", flush=True)
    print("\n".join(lines))
    store.close()


if __name__ == "__main__":
    main()
