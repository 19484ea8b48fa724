"""Ingest throughput and memory: Stratum vs plain pyarrow on a generated CSV.

Generates a 1,000,000-row x 20-column CSV (18 numeric features, 1 categorical, 1 class
label) in a temp dir, then, in separate child processes (so each one's peak RSS is its
own, from getrusage(RUSAGE_SELF).ru_maxrss): plain pyarrow reading the CSV and writing
one Parquet file, and ``stratum.data.ingest``
cleaning, splitting and sharding it into 8 shards x 2 replicas. The two alternate
``--repeat`` times (the machine's noise hits both alike); the table shows medians and the
ratio is the median of the paired per-round ratios.

    .venv/bin/python bench/data.py [--rows 1000000] [--shards 8] [--replicas 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

CHILD = r"""
import json, resource, sys, time
mode, csv, out = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
if mode == "pyarrow":
    import pyarrow.csv as pacsv, pyarrow.parquet as pq
    table = pacsv.read_csv(csv)
    pq.write_table(table, out + "/plain.parquet")
    rows = table.num_rows
else:
    from stratum.config import load_settings
    from stratum.store import Store
    from stratum.data import ingest
    store = Store.open(load_settings(home=out + "/home"))
    shards, replicas = int(sys.argv[4]), int(sys.argv[5])
    t0 = time.perf_counter()
    res = ingest(csv, "bench", store, shards=shards, replicas=replicas)
    rows = res.report.rows_read
elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rows": rows, "seconds": elapsed, "peak_bytes": peak}))
"""


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Write the CSV in chunks so generating it stays small too."""
    rng = np.random.default_rng(seed)
    chunk = 200_000
    with pacsv.CSVWriter(path, _schema()) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            cols = {f"x{i}": pa.array(np.round(rng.normal(i, 1 + i / 4, n), 5))
                    for i in range(18)}
            cols["color"] = pa.array(rng.choice(["red", "green", "blue", "amber"], n))
            cols["label"] = pa.array(rng.integers(0, 5, n))
            writer.write_table(pa.table(cols, schema=_schema()))


def _schema() -> pa.Schema:
    return pa.schema([*(pa.field(f"x{i}", pa.float64()) for i in range(18)),
                      pa.field("color", pa.string()), pa.field("label", pa.int64())])


def run_child(mode: str, csv: Path, out: Path, shards: int, replicas: int) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(csv), str(out), str(shards), str(replicas)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="stratum-bench-data-") as tmp:
        root = Path(tmp)
        csv = root / "bench.csv"
        t = time.perf_counter()
        generate(csv, args.rows)
        size = csv.stat().st_size
        print(f"generated {args.rows:,} rows x 20 columns ({size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t:.1f}s")
        plains, ours_runs = [], []
        for i in range(args.repeat):
            plains.append(run_child("pyarrow", csv, root / f"plain{i}", args.shards,
                                    args.replicas))
            ours_runs.append(run_child("stratum", csv, root / f"ours{i}", args.shards,
                                       args.replicas))
    ratios = [(o["rows"] / o["seconds"]) / (p["rows"] / p["seconds"])
              for p, o in zip(plains, ours_runs, strict=True)]
    ratio = statistics.median(ratios)
    print()
    print(f"{'run (median of ' + str(args.repeat) + ')':<44}{'seconds':>9}{'rows/s':>13}"
          f"{'peak RSS':>11}")
    for label, runs in (("pyarrow read_csv + write one Parquet file", plains),
                        (f"stratum ingest+clean+shard {args.shards}x{args.replicas}", ours_runs)):
        secs = statistics.median(r["seconds"] for r in runs)
        peak = max(r["peak_bytes"] for r in runs)
        print(f"{label:<44}{secs:>9.2f}{runs[0]['rows'] / secs:>13,.0f}"
              f"{peak / 2**20:>8.0f} MiB")
    print(f"\nthroughput ratio stratum/pyarrow: {ratio:.2f} median of {args.repeat} paired "
          f"runs ({min(ratios):.2f}-{max(ratios):.2f}; target >= 0.5)")
    peak = max(r["peak_bytes"] for r in ours_runs)
    print(f"stratum peak memory: {peak / 2**20:.0f} MiB (target < 1024 MiB)")


if __name__ == "__main__":
    main()
