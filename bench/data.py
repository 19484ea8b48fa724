"""Ingest throughput and memory: Stratum vs plain pyarrow on a generated CSV.

Generates a 1,000,000-row x 20-column CSV (18 numeric features, 1 categorical, 1 class
label) in a temp dir, then, in separate child processes (so each one's peak RSS is its
own, from getrusage(RUSAGE_SELF).ru_maxrss): plain pyarrow reading the CSV and writing
one Parquet file, and ``stratum.data.ingest``
cleaning, splitting and sharding it into 8 shards x 2 replicas. Prints a table.

    .venv/bin/python bench/data.py [--rows 1000000] [--shards 8] [--replicas 2]
"""

from __future__ import annotations

import argparse
import json
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="stratum-bench-data-") as tmp:
        root = Path(tmp)
        csv = root / "bench.csv"
        t = time.perf_counter()
        generate(csv, args.rows)
        size = csv.stat().st_size
        print(f"generated {args.rows:,} rows x 20 columns ({size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t:.1f}s")
        plain = run_child("pyarrow", csv, root / "plain", args.shards, args.replicas)
        ours = run_child("stratum", csv, root / "ours", args.shards, args.replicas)
    ratio = (ours["rows"] / ours["seconds"]) / (plain["rows"] / plain["seconds"])
    print()
    print(f"{'run':<44}{'seconds':>9}{'rows/s':>13}{'peak RSS':>11}")
    for label, r in (("pyarrow read_csv + write one Parquet file", plain),
                     (f"stratum ingest+clean+shard {args.shards}x{args.replicas}", ours)):
        print(f"{label:<44}{r['seconds']:>9.2f}{r['rows'] / r['seconds']:>13,.0f}"
              f"{r['peak_bytes'] / 2**20:>8.0f} MiB")
    print(f"\nthroughput ratio stratum/pyarrow: {ratio:.2f} (target >= 0.5)")
    print(f"stratum peak memory: {ours['peak_bytes'] / 2**20:.0f} MiB (target < 1024 MiB)")


if __name__ == "__main__":
    main()
