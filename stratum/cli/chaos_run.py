"""Running ``stratum chaos`` scenarios one after another on one deployment.

For each scenario: skip it (with the reason) when it cannot run here; wait until the
deployment is ready; start the load; after ``WARMUP_S`` inject the fault and wait for
recovery; put the wanted state back; keep the load on until ``--duration`` has passed and
at least ``SETTLE_S`` after recovery (failures just after a "recovery" count too); stop the
load and judge: passed when it recovered and failed no more requests than its bar.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from stratum.cli.chaos_load import Load, Tally, sample_body
from stratum.cli.chaos_scenarios import Options, Scenario
from stratum.cli.chaos_target import NotRecovered, Target
from stratum.errors import StratumError

WARMUP_S = 1.0
SETTLE_S = 2.0

# progress(scenario, what it waits for, the load's tally so far)
Progress = Callable[[str, str, Tally], None]


@dataclass
class Outcome:
    scenario: str
    status: str  # passed | failed | skipped
    requests: int = 0
    failed: int = 0
    bar: int | None = None  # failed requests allowed
    recover_s: float | None = None  # fault → recovered; None: it did not (or skipped)
    note: str = ""
    errors: list[str] = field(default_factory=list)  # the commonest failures

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["recover_s"] = None if self.recover_s is None else round(self.recover_s, 2)
        return out


def run_all(t: Target, scenarios: list[Scenario], o: Options, *,
            headers: dict[str, str] | None = None,
            body: dict[str, Any] | None = None,
            progress: Progress | None = None) -> list[Outcome]:
    body = body or sample_body(t.model_spec())
    show = progress or (lambda _s, _w, _t: None)
    outcomes = []
    for sc in scenarios:
        reason = sc.skip(t, o)
        if reason is not None:
            outcomes.append(Outcome(sc.name, "skipped", note=reason))
            continue
        idle = Tally()

        def waiting(what: str, name: str = sc.name, idle: Tally = idle) -> None:
            show(name, what, idle)

        t.on_poll = waiting
        try:
            t.wait_settled(o.timeout, what="ready before the scenario")
        except NotRecovered as exc:
            outcomes.append(Outcome(sc.name, "failed", note=f"not run: {exc}"))
            continue
        outcomes.append(_one(t, sc, o, body, headers or {}, show))
    return outcomes


def _one(t: Target, sc: Scenario, o: Options, body: dict[str, Any],
         headers: dict[str, str], show: Progress) -> Outcome:
    load = Load(t.url(), t.name, body, concurrency=o.concurrency, headers=headers,
                verify=t.verify, feedback=sc.feedback).start()
    t.on_poll = lambda what: show(sc.name, what, load.tally)
    started = time.monotonic()
    recover: float | None = None
    note = ""
    try:
        _idle(t, WARMUP_S, "load warming up")
        try:
            recover, note = sc.run(t, o, load)
        except NotRecovered as exc:
            note = str(exc)
        except Exception as exc:  # the scenario could not do its part: it failed, say why
            note = f"{type(exc).__name__}: {exc}"
        try:
            if t.restore(o.timeout):
                note += "; wanted state restored"
        except (NotRecovered, StratumError) as exc:
            note += f"; could not restore the wanted state: {exc}"
            recover = None
        _idle(t, max(started + o.duration - time.monotonic(), SETTLE_S), "load running on")
    finally:
        tally = load.stop()
    bar = sc.bar(o)
    ok = recover is not None and tally.failed <= bar
    return Outcome(sc.name, "passed" if ok else "failed", tally.requests, tally.failed, bar,
                   recover, note, tally.top_reasons())


def _idle(t: Target, seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        t.on_poll(what)
        time.sleep(min(0.2, left))


__all__ = ["Outcome", "Progress", "run_all"]
