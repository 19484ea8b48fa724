"""Read-ahead for record-batch streams (see ``prefetch``)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def prefetch(batches: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Read the next ``depth`` batches in a background thread while the caller works on
    the current one: Arrow's readers release the GIL, so reading overlaps cleaning and
    shard writing. Exceptions reach the caller where the plain iterator would raise them."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(("batch", b), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", None))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(("error", exc))

    t = threading.Thread(target=work, name="prefetch", daemon=True)
    t.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()  # the consumer stopped early (an error, or it broke off): end the thread
        while t.is_alive():  # it may be blocked handing over one last item
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass


__all__ = ["prefetch"]
