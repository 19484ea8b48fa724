"""A real consumer process for the queue tests.

    python -m tests.integration.queue_consumer drain URL STREAM NAME OUT META_URL
        lease batches, claim each message's "key" in the metadata DB (apply-once),
        write "applied KEY" / "acked ID" lines to OUT, ack; stop once the queue is empty.
    python -m tests.integration.queue_consumer hang URL STREAM NAME OUT
        lease one batch, write "leased ID" lines to OUT, then sleep until killed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from stratum.queue import open_queue
from stratum.store import MetadataStore, ProcessedIds


def drain(url: str, stream: str, name: str, out: str, meta_url: str) -> None:
    q = open_queue(url, stream)
    meta = MetadataStore.open(meta_url)
    processed = ProcessedIds(meta.engine, consumer="test")
    # Start barrier: process start-up time varies a lot on a loaded machine, and a
    # consumer that starts seconds late would find the queue already drained.
    Path(out + ".ready").touch()
    go = Path(out).parent / "go"
    while not go.exists():
        time.sleep(0.02)
    idle_since = time.monotonic()
    with open(out, "a", buffering=1) as fh:
        while time.monotonic() - idle_since < 1.5:
            batch = q.get(max_items=5, visibility_timeout_s=30, consumer=name, wait_s=0.1)
            if not batch:
                continue
            for key in processed.claim([m.payload["key"] for m in batch]):
                fh.write(f"applied {key}\n")
            time.sleep(0.02)  # let the other consumer interleave
            q.ack([m.id for m in batch])
            for m in batch:
                fh.write(f"acked {m.id}\n")
            idle_since = time.monotonic()


def hang(url: str, stream: str, name: str, out: str) -> None:
    q = open_queue(url, stream)
    batch = q.get(max_items=10, visibility_timeout_s=2.0, consumer=name)
    with open(out, "w") as fh:
        fh.writelines(f"leased {m.id}\n" for m in batch)
    time.sleep(600)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "drain":
        drain(*args)
    elif mode == "hang":
        hang(*args)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
