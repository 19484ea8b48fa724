"""The supervisor's decisions with a fake clock: no processes, no sockets. That one broken
deployment does not hold up the others is shown with real processes in
tests/integration/test_deploy_reliability.py."""

from __future__ import annotations

import itertools

from stratum.config.settings import ControlSettings
from stratum.control.reconcile import Reconciler, alias_move
from stratum.control.routing import compute_routes
from stratum.control.spec import DeploymentSpec
from stratum.control.state import DeploymentState, Replica, observed

_numbers = itertools.count(20_000)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def spec(version: int = 1, replicas: int = 2, **kw: object) -> DeploymentSpec:
    return DeploymentSpec(model="m", ref=str(version), version=version, replicas=replicas,
                          port=8000, **kw)  # type: ignore[arg-type]


def setup(cfg: ControlSettings | None = None) -> tuple[Reconciler, Clock]:
    clock = Clock()
    return Reconciler(cfg or ControlSettings(), clock), clock


def deployed(rec: Reconciler, wanted: DeploymentSpec, generation: int = 1) -> DeploymentState:
    st = DeploymentState("m")
    rec.wanted(st, wanted, generation)
    return st


def start_ready(rec: Reconciler, st: DeploymentState, wanted: DeploymentSpec) -> list[Replica]:
    """Start what the reconciler asks for; every new replica then answers its probe."""
    out = []
    for start in rec.to_start(st, wanted):
        rec.started(st, start, port=next(_numbers), pid=next(_numbers))
        replica = st.replicas[start.id]
        rec.probed(st, replica, ok=True)
        out.append(replica)
    return out


def acknowledge(rec: Reconciler, st: DeploymentState,
                wanted: DeploymentSpec) -> dict[str, bool]:
    """Compute the routes as the supervisor does and let the gateway accept them; what is
    then to stop, as ``{replica id: drain}``."""
    if not st.gateways:
        rec.gateway_started(st, 0, wanted.port, admin_port=9000, pid=41)
    for gw in st.gateways.values():
        rec.gateway_probed(st, gw, live=True)
    routes, traffic, serving = compute_routes(st.name, wanted, st.replicas.values())
    assert routes is not None
    for gw in rec.to_push(st, routes):
        rec.pushed(st, gw, routes, traffic)
    return {s.replica.id: s.drain for s in rec.to_stop(st, wanted, routes, serving)}


def restart_delay(rec: Reconciler, clock: Clock, st: DeploymentState,
                  wanted: DeploymentSpec, step: float = 0.05) -> float:
    """How long after now the reconciler first decides to start a replica again."""
    t0 = clock.now
    while not rec.to_start(st, wanted):
        clock.advance(step)
        assert clock.now - t0 < 3_600, "never restarted"
    return clock.now - t0


def test_a_crashed_replica_restarts_at_once_and_a_second_crash_after_its_backoff() -> None:
    rec, clock = setup(ControlSettings(restart_backoff_s=1.0, restart_backoff_max_s=8.0))
    wanted = spec(replicas=2)
    st = deployed(rec, wanted)
    first, second = start_ready(rec, st, wanted)
    assert rec.to_start(st, wanted) == []  # both there: nothing to do

    event = rec.replica_exited(st, first, exit_code=-9, log_tail="")
    assert event.kind == "replica.crashed" and first.id not in st.replicas
    starts = rec.to_start(st, wanted)  # the first crash: replaced now
    assert [s.version for s in starts] == [1]
    assert starts[0].id not in (first.id, second.id)
    rec.started(st, starts[0], port=next(_numbers), pid=next(_numbers))
    third = st.replicas[starts[0].id]
    rec.probed(st, third, ok=True)
    rec.replica_exited(st, third, exit_code=-9, log_tail="")  # again, before it was stable
    assert rec.to_start(st, wanted) == []
    clock.advance(0.9)
    assert rec.to_start(st, wanted) == []
    clock.advance(0.2)
    assert [s.version for s in rec.to_start(st, wanted)] == [1]


def test_backoff_grows_with_each_crash_up_to_its_cap_and_resets_once_stable() -> None:
    rec, clock = setup(ControlSettings(restart_backoff_s=0.5, restart_backoff_max_s=4.0))
    wanted = spec(replicas=1)
    st = deployed(rec, wanted)
    delays = []
    for _ in range(6):
        (replica,) = start_ready(rec, st, wanted)
        rec.replica_exited(st, replica, exit_code=1, log_tail="")
        delays.append(restart_delay(rec, clock, st, wanted))
    assert delays[0] == 0  # the first crash is replaced at once; a loop backs off
    assert all(b > a * 1.5 for a, b in itertools.pairwise(delays[1:5])), delays
    assert 3.9 <= delays[-1] <= 4.1 and abs(delays[-1] - delays[-2]) < 0.1, delays

    (replica,) = start_ready(rec, st, wanted)
    clock.advance(60)  # serving for a minute: a later crash starts the count afresh
    rec.probed(st, replica, ok=True)
    rec.replica_exited(st, replica, exit_code=1, log_tail="")
    assert restart_delay(rec, clock, st, wanted) < delays[1]


def test_a_new_count_keeps_the_crash_backoff_and_a_new_version_clears_it() -> None:
    """The autoscaler writes a generation per step: a crash-looping version must not be
    restarted at once again each time (issue 13 review)."""
    rec, clock = setup(ControlSettings(restart_backoff_s=1.0, restart_backoff_max_s=8.0))
    wanted = spec(replicas=1)
    st = deployed(rec, wanted)
    for _ in range(3):
        (replica,) = start_ready(rec, st, wanted)
        rec.replica_exited(st, replica, exit_code=1, log_tail="")
        clock.advance(10)
    (replica,) = start_ready(rec, st, wanted)
    rec.replica_exited(st, replica, exit_code=1, log_tail="")  # a loop: backing off now
    assert rec.to_start(st, wanted) == []
    more = spec(replicas=2)
    rec.wanted(st, more, 2)  # scaled: the same version, still backing off
    assert rec.to_start(st, more) == []
    other = spec(version=2, replicas=2)
    rec.wanted(st, other, 3)  # another version: a fresh start
    assert [s.version for s in rec.to_start(st, other)] == [2, 2]


def test_a_replica_starting_past_the_ready_deadline_is_given_up_on() -> None:
    rec, clock = setup(ControlSettings(ready_timeout_s=60))
    wanted = spec(replicas=2)
    st = deployed(rec, wanted)
    for start in rec.to_start(st, wanted):
        rec.started(st, start, port=next(_numbers), pid=next(_numbers))
    slow, quick = st.replicas.values()
    rec.probed(st, quick, ok=True)
    clock.advance(59)
    assert not rec.past_ready_deadline(slow)
    clock.advance(2)
    assert rec.past_ready_deadline(slow) and not rec.past_ready_deadline(quick)
    assert rec.replica_exited(st, slow, -9, "still loading").kind == "replica.failed"
    assert st.start_failures[1] == 1
    assert st.last_error is not None and "still loading" in st.last_error["message"]


def test_scaling_up_starts_the_missing_and_down_stops_the_newest_once_routed() -> None:
    rec, clock = setup()
    one = spec(replicas=1)
    st = deployed(rec, one)
    (oldest,) = start_ready(rec, st, one)
    acknowledge(rec, st, one)

    three = spec(replicas=3)
    rec.wanted(st, three, 2)
    clock.advance(1)
    added = start_ready(rec, st, three)
    assert len(added) == 2 and {r.version for r in added} == {1}
    assert len({oldest.id, *(r.id for r in added)}) == 3
    assert acknowledge(rec, st, three) == {}

    rec.wanted(st, one, 3)
    assert rec.to_start(st, one) == []
    routes, _, serving = compute_routes(st.name, one, st.replicas.values())
    assert rec.to_stop(st, one, routes, serving) == []  # the gateway still names them
    assert acknowledge(rec, st, one) == {r.id: True for r in added}


def test_an_update_keeps_the_old_version_until_the_new_one_serves() -> None:
    rec, _ = setup()
    v1 = spec(version=1, replicas=2)
    st = deployed(rec, v1)
    old = start_ready(rec, st, v1)
    acknowledge(rec, st, v1)

    v2 = spec(version=2, replicas=2, previous={"ref": "1", "version": 1})
    rec.wanted(st, v2, 2)
    starts = rec.to_start(st, v2)
    assert [s.version for s in starts] == [2, 2]
    new = []
    for start in starts:
        rec.started(st, start, port=next(_numbers), pid=next(_numbers))
        new.append(st.replicas[start.id])
    assert rec.to_start(st, v2) == []  # starting ones count: no second wave

    rec.probed(st, new[0], ok=True)  # half of the new version is up
    assert acknowledge(rec, st, v2) == {}
    assert st.traffic[0]["version"] == 1
    assert observed(st, v2, True, "127.0.0.1")[0] == "updating"

    rec.probed(st, new[1], ok=True)
    # the old ones served: they are drained, let finish what they have
    assert acknowledge(rec, st, v2) == {r.id: True for r in old}
    assert st.traffic[0]["version"] == 2
    for r in old:
        rec.retiring(r)
        rec.replica_exited(st, r, 0, "")
    assert observed(st, v2, True, "127.0.0.1")[0] == "ready"


def test_a_followed_alias_move_swaps_replicas_in_place() -> None:
    rec, clock = setup(ControlSettings(restart_backoff_s=1.0))
    v1 = spec(version=1, replicas=2, follow="production")
    st = deployed(rec, v1)
    a, b = start_ready(rec, st, v1)

    assert alias_move(v1, {"production": 1}, set()) is None
    assert alias_move(v1, {"production": 2}, {2}) is None  # 2 already failed to start
    v2 = alias_move(v1, {"production": 2}, set())
    assert v2 is not None and v2.version == 2 and v2.previous is not None
    assert v2.previous.version == 1 and v2.follow == "production"
    rec.wanted(st, v2, 2)

    swaps = rec.to_swap(st, v2)
    assert {(s.replica.id, s.version) for s in swaps} == {(a.id, 2), (b.id, 2)}
    assert rec.to_start(st, v2) == []  # replicas loading v2 count as v2: no new process
    assert rec.to_swap(st, v2) == []  # and they are not asked twice

    assert rec.swap_done(st, a, 2, ok=True, detail="", seconds=0.5).kind == "replica.swapped"
    assert a.version == 2
    assert rec.swap_done(st, b, 2, ok=False, detail="boom", seconds=0.5).kind == \
        "replica.swap_failed"
    assert b.version == 1 and b.swapping is None
    assert rec.to_swap(st, v2) == [] and rec.to_start(st, v2) == []  # backing off
    clock.advance(1.1)
    assert [s.replica.id for s in rec.to_swap(st, v2)] == [b.id]


def test_a_version_that_never_starts_reverts_to_the_one_serving() -> None:
    rec, clock = setup(ControlSettings(start_attempts=2, restart_backoff_s=1.0))
    v1 = spec(version=1, replicas=1)
    st = deployed(rec, v1)
    start_ready(rec, st, v1)
    v2 = spec(version=2, replicas=1, previous={"ref": "1", "version": 1})
    rec.wanted(st, v2, 2)
    for _ in range(2):
        assert rec.give_up(st, v2) is None
        (start,) = rec.to_start(st, v2)
        rec.started(st, start, port=next(_numbers), pid=next(_numbers))
        rec.replica_exited(st, st.replicas[start.id], 1, "ImportError")
        clock.advance(5)
    give_up = rec.give_up(st, v2)
    assert give_up is not None and give_up.version == 2
    assert give_up.fallback is not None and give_up.fallback.version == 1
    assert "ImportError" in give_up.event.payload["message"]


def first_deploy_crashed(error: str) -> tuple[Reconciler, Clock, DeploymentSpec,
                                         DeploymentState]:
    """A first deploy of v1, one replica, allowed one start, whose replica died."""
    rec, clock = setup(ControlSettings(start_attempts=1))
    v1 = spec(version=1, replicas=1)
    st = deployed(rec, v1)
    (start,) = rec.to_start(st, v1)
    rec.started(st, start, port=next(_numbers), pid=next(_numbers))
    rec.replica_exited(st, st.replicas[start.id], 1, error)
    return rec, clock, v1, st


def test_a_first_deploy_that_never_starts_fails_and_stops_trying() -> None:
    rec, clock, v1, st = first_deploy_crashed("")
    give_up = rec.give_up(st, v1)
    assert give_up is not None and give_up.fallback is None
    clock.advance(10_000)
    assert rec.to_start(st, v1) == []
    assert observed(st, v1, False, "127.0.0.1")[0] == "failed"


def test_a_give_up_is_said_once_per_generation_not_every_tick() -> None:
    rec, clock, v1, st = first_deploy_crashed("ImportError: no module named nope")
    first = rec.give_up(st, v1)
    assert first is not None and first.event.kind == "deployment.update_failed"
    said = dict(first.event.payload)
    for _ in range(50):  # later ticks: the spec still wants v1, nothing more is said
        clock.advance(1.0)
        assert rec.give_up(st, v1) is None and rec.to_start(st, v1) == []
    assert st.last_error == said
    assert observed(st, v1, False, "127.0.0.1")[0] == "failed"

    # A new generation of the same versions (a scale) makes no new attempt, but hears
    # the failure once for itself (`stratum scale` waits on it), with the same error.
    rec.wanted(st, spec(version=1, replicas=2), 2)
    again = rec.give_up(st, spec(version=1, replicas=2))
    assert again is not None and again.event.payload["generation"] == 2
    assert again.event.payload["message"] == said["message"]
    assert rec.give_up(st, spec(version=1, replicas=2)) is None

    # A new deploy that wants it again tries afresh and can give up again.
    v1_canary = spec(version=1, replicas=1, canary={"ref": "2", "version": 2, "percent": 10})
    rec.wanted(st, v1_canary, 3)
    starts = rec.to_start(st, v1_canary)
    assert sorted(s.version for s in starts) == [1, 2]
    for s in starts:
        rec.started(st, s, port=next(_numbers), pid=next(_numbers))
    v1_replica = next(r for r in st.replicas.values() if r.version == 1)
    rec.replica_exited(st, v1_replica, 1, "MemoryError")
    third = rec.give_up(st, v1_canary)
    assert third is not None and third.version == 1 and third.fallback is None
    assert third.event.payload["generation"] == 3 and "MemoryError" in \
        third.event.payload["message"]
    assert rec.give_up(st, v1_canary) is None


def test_an_undeployed_deployment_stops_everything_without_draining() -> None:
    rec, _ = setup()
    v1 = spec(replicas=2)
    st = deployed(rec, v1)
    start_ready(rec, st, v1)
    rec.gateway_started(st, 0, 8000, admin_port=9000, pid=42)
    rec.wanted(st, None, 2)
    stops = rec.to_stop(st, None, None, set())
    assert {s.replica.id for s in stops} == set(st.replicas) and not any(s.drain for s in stops)
    assert not st.finished
    for s in stops:
        rec.replica_exited(st, s.replica, 0, "")
    assert rec.gateway_exited(st, st.gateways[0], "") is None  # we stopped it: not a crash
    assert st.finished


def test_several_gateways_share_the_port_and_each_is_replaced_alone() -> None:
    rec, clock = setup(ControlSettings(restart_backoff_s=1.0))
    v1 = spec(replicas=1, gateways=2)
    st = deployed(rec, v1)
    start_ready(rec, st, v1)
    start, stop = rec.gateway_actions(st, v1)
    assert (start, stop) == ([0, 1], [])
    for slot in start:
        rec.gateway_started(st, slot, 8000, admin_port=9000 + slot, pid=50 + slot)
    assert rec.gateway_actions(st, v1) == ([], [])
    routes, traffic, _ = compute_routes(st.name, v1, st.replicas.values())
    assert routes is not None
    rec.gateway_probed(st, st.gateways[0], live=True)
    assert [g.slot for g in rec.to_push(st, routes)] == [0]  # only live ones get pushes
    assert rec.pushed(st, st.gateways[0], routes, traffic) is not None  # traffic is new
    assert rec.acknowledged(st, routes)  # every live gateway holds it
    assert observed(st, v1, True, "127.0.0.1")[0] != "ready"  # one of two is up
    rec.gateway_probed(st, st.gateways[1], live=True)
    assert not rec.acknowledged(st, routes)  # the second came up without it
    assert rec.pushed(st, st.gateways[1], routes, traffic) is None  # same traffic: no event
    assert rec.acknowledged(st, routes)
    status, doc = observed(st, v1, True, "127.0.0.1")
    assert status == "ready" and [g["admin_port"] for g in doc["gateways"]] == [9000, 9001]
    assert doc["gateway"]["port"] == 8000 and doc["gateway"]["pid"] in (50, 51)
    # One crashes: only its slot restarts, after its backoff; the other keeps serving.
    ev = rec.gateway_exited(st, st.gateways[1], "boom")
    assert ev is not None and ev.kind == "gateway.crashed"
    assert st.gateway_live and rec.acknowledged(st, routes)
    assert rec.gateway_actions(st, v1) == ([], [])
    clock.advance(1.1)
    assert rec.gateway_actions(st, v1) == ([1], [])
    # Fewer gateways: the surplus stops, and its exit is not a crash.
    v2 = v1.model_copy(update={"gateways": 1})
    rec.wanted(st, v2, 2)
    rec.gateway_started(st, 1, 8000, admin_port=9002, pid=60)
    _, stop = rec.gateway_actions(st, v2)
    assert [g.slot for g in stop] == [1]
    assert rec.gateway_exited(st, st.gateways[1], "") is None
    # A new port: the old ones stop first, none start beside them.
    v3 = v2.model_copy(update={"port": 8100})
    rec.wanted(st, v3, 3)
    start, stop = rec.gateway_actions(st, v3)
    assert start == [] and [g.slot for g in stop] == [0]
    rec.gateway_exited(st, st.gateways[0], "")
    assert rec.gateway_actions(st, v3) == ([0], [])
