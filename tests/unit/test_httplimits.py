"""The HTTP limits' bookkeeping without sockets: the connection cap closes the longest-idle
connections first and refuses only when every connection is busy; the sweep times a state
out after its timeout, never before, never while an answer is owed, and again only a
timeout later (when a closed connection is dropped); an unfinished head is bounded;
refusals are complete HTTP responses with the error JSON; ``limit_body``."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from stratum.asgi import limit_body
from stratum.config import HttpLimits
from stratum.httplimits import BODY, HEAD, IDLE, Refusals, Watch, head_overflows

LIMITS = HttpLimits(max_connections=8, header_timeout_s=2.0, body_timeout_s=3.0,
                    keep_alive_s=1.0)


@dataclass(eq=False)
class Conn:
    state: int = IDLE
    requests: int = 0
    busy: bool = False
    seen: tuple[int, int, bool] | None = None
    since: float = float("inf")
    fed: int = 0
    head_of: int = 0
    events: list[str] = field(default_factory=list)

    def answering(self) -> bool:
        return self.busy

    def expire(self) -> None:
        self.events.append(f"expired in {self.state}")

    def hang_up(self) -> None:
        self.events.append("hung up")


def _in_loop(fn: Any) -> Any:
    async def main() -> Any:
        return fn()
    return asyncio.run(main())


def test_the_cap_closes_the_longest_idle_first_and_refuses_when_all_are_busy() -> None:
    def run() -> None:
        watch = Watch(LIMITS)
        conns = [Conn(since=float(i)) for i in range(8)]
        for c in conns:
            assert watch.admit(c)
        conns[0].busy = True  # the oldest has an answer owed: it stays
        conns[1].state = HEAD  # mid-request: it stays
        newcomer = Conn()
        assert watch.admit(newcomer)
        assert conns[2].events == ["hung up"] and conns[2] not in watch.conns
        assert not any(c.events for c in conns[:2] + conns[3:])
        for c in [*conns, newcomer]:
            c.busy = True
        assert not watch.admit(Conn())
        watch.stop()
    _in_loop(run)


def test_the_sweep_times_each_state_out_after_its_timeout_only() -> None:
    def run() -> None:
        watch = Watch(LIMITS)
        idle, head, body, owed = Conn(), Conn(state=HEAD), Conn(state=BODY), Conn(busy=True)
        for c in (idle, head, body, owed):
            watch.admit(c)
        watch.stop()
        now = asyncio.get_running_loop().time()
        watch._sweep()  # first sight: each state's clock starts
        watch.stop()
        for c in (idle, head, body, owed):
            c.since = now - 1.5  # 1.5 s in the same state
        watch._sweep()
        watch.stop()
        assert idle.events == ["expired in 0"] and not head.events and not body.events
        assert not owed.events  # an answer is owed: no timeout runs
        watch._sweep()  # expired once: the next try (a drop) waits a whole timeout more
        watch.stop()
        assert idle.events == ["expired in 0"]
        head.since = body.since = now - 3.5
        watch._sweep()
        watch.stop()
        assert head.events == ["expired in 1"] and body.events == ["expired in 2"]
        # Progress (a new request) restarts the clock.
        idle.events.clear()
        idle.requests += 1
        watch._sweep()
        watch.stop()
        assert not idle.events
    _in_loop(run)


def test_an_unfinished_head_is_bounded_from_its_second_read() -> None:
    c = Conn(state=HEAD, requests=1)
    assert not head_overflows(c, 200_000, LIMITS)  # its first read may hold the one before
    limit = LIMITS.max_header_bytes + LIMITS.max_url_bytes
    assert not head_overflows(c, limit, LIMITS)
    assert head_overflows(c, 1, LIMITS)
    c.requests = 2  # the next request starts counting afresh
    assert not head_overflows(c, limit, LIMITS)


def test_refusals_are_whole_responses_with_the_error_json() -> None:
    r = Refusals(LIMITS)
    for raw, status in [(r.url, 414), (r.header_bytes, 431), (r.header_count, 431),
                        (r.timeouts[HEAD], 408), (r.timeouts[BODY], 408), (r.full, 503),
                        (r.bad_request, 400)]:
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status) and b"connection: close" in head
        assert f"content-length: {len(body)}".encode() in head
        doc = json.loads(body)
        assert set(doc) <= {"error", "message", "hint"} and doc["message"]
    assert r.headers(LIMITS.max_header_bytes + 1) == r.header_bytes
    assert r.headers(10) == r.header_count


def test_limit_body_refuses_a_large_body_before_the_app_and_replays_a_small_one() -> None:
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call(chunks: list[bytes], length: str | None) -> list[dict[str, Any]]:
        msgs = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return msgs.pop(0) if msgs else {"type": "http.disconnect"}

        async def send(m: dict[str, Any]) -> None:
            sent.append(m)

        headers = [(b"content-length", length.encode())] if length else []
        await limit_body(app, 1024)({"type": "http", "headers": headers}, receive, send)
        return sent

    assert asyncio.run(call([b"a" * 10, b"b" * 10], None))[0]["status"] == 200
    assert seen == [b"a" * 10 + b"b" * 10]
    for chunks, length in [([b"x"], "5000"), ([b"x" * 600, b"x" * 600], None)]:
        sent = asyncio.run(call(chunks, length))
        assert sent[0]["status"] == 413
        assert json.loads(sent[1]["body"])["error"] == "PayloadTooLargeError"
    assert len(seen) == 1  # neither reached the app
