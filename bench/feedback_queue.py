"""Queue throughput: producer puts (one at a time, with a dedupe key, as the feedback
route does) and consumer get+ack in batches of 64.

    .venv/bin/python bench/feedback_queue.py                            # embedded SQLite file
    .venv/bin/python bench/feedback_queue.py redis://127.0.0.1:6379/0   # Redis Streams
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid

from stratum.queue import open_queue


def main(url: str, n: int = 2000) -> None:
    q = open_queue(url, f"bench-{uuid.uuid4().hex[:6]}")
    t = time.perf_counter()
    for i in range(n):
        q.put({"request_id": f"r{i}", "label": i % 10}, dedupe_key=f"r{i}")
    put = n / (time.perf_counter() - t)
    t, done = time.perf_counter(), 0
    while done < n:
        batch = q.get(64, 30)
        q.ack([m.id for m in batch])
        done += len(batch)
    consume = n / (time.perf_counter() - t)
    print(f"{url.split(':')[0]}: put {put:,.0f} msg/s; get+ack {consume:,.0f} msg/s")
    delete = getattr(q, "delete", None)
    if delete is not None:
        delete()
    q.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else f"sqlite:///{tempfile.mkdtemp()}/queue.db")
