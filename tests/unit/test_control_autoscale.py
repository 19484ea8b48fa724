"""The autoscaler's decisions with a fake clock (no processes, no sockets): up at once,
down only after a cooldown and with headroom, within bounds, to and from zero; how a deploy
request sets autoscaling; how a gateway's document becomes a load sample; the routing
table of a deployment scaled to zero. The same loop with real processes under load is
tests/integration/test_autoscale.py."""

from __future__ import annotations

import pytest

from stratum.config.settings import ControlSettings
from stratum.control.autoscale import (
    Autoscale,
    AutoscaleSpec,
    Load,
    Scaling,
    resolve_scaling,
)
from stratum.control.autoscaler import LoadReader
from stratum.control.routing import compute_routes, to_retire
from stratum.control.spec import DeploymentSpec, autoscale_notice
from stratum.control.state import Replica
from stratum.errors import ConfigError
from tests.unit.test_control_reconcile import Clock

WINDOW = 2.0
STEP = 0.5  # the sampling interval


def policy(lo: int = 1, hi: int = 3, target: float = 4.0, cooldown: float = 10.0,
           ) -> AutoscaleSpec:
    return AutoscaleSpec(min_replicas=lo, max_replicas=hi, target_inflight=target,
                         scale_down_cooldown_s=cooldown)


class Loop:
    """The autoscaler's loop without its effects: sample, decide, apply what it decided."""

    def __init__(self, p: AutoscaleSpec, replicas: int) -> None:
        self.clock = Clock()
        self.scale = Autoscale(WINDOW, self.clock)
        self.p, self.replicas = p, replicas
        self.reasons: list[str] = []

    def run(self, seconds: float, inflight: int, waiting: int = 0,
            settling: bool = False) -> list[tuple[float, int]]:
        """Sample ``inflight``/``waiting`` every STEP for ``seconds``; the changes made,
        as ``(seconds since the start of this call, new count)``."""
        changes = []
        t0 = self.clock.now
        while self.clock.now - t0 < seconds:
            self.clock.advance(STEP)
            d = self.scale.decide("m", self.p, self.replicas,
                                  Load(inflight, waiting, self.replicas, settling))
            if d is not None:
                self.replicas = d.replicas
                self.reasons.append(d.reason)
                self.scale.applied("m")
                changes.append((round(self.clock.now - t0, 2), d.replicas))
        return changes


def test_light_load_does_not_scale_up() -> None:
    loop = Loop(policy(), 1)
    assert loop.run(30, inflight=1) == []
    assert loop.run(30, inflight=4) == []  # exactly at the target: still one


def test_a_step_of_load_scales_up_within_one_sample_and_stops_at_max() -> None:
    loop = Loop(policy(target=4), 1)
    loop.run(5, inflight=1)
    changes = loop.run(5, inflight=64)
    assert changes == [(0.5, 3)] and loop.reasons == ["load"]  # 64 / 4 wants 16; max 3


def test_scale_up_asks_for_what_the_demand_needs_not_more() -> None:
    loop = Loop(policy(hi=10, target=4), 1)
    loop.run(5, inflight=2)
    # The window's mean catches up in steps: 2 wanted after two samples, 3 after four.
    assert loop.run(10, inflight=10) == [(1.0, 2), (2.0, 3)]
    assert loop.replicas == 3  # ceil(10 / 4): not one more per sample while they start


def test_scale_down_waits_for_the_cooldown_after_the_last_change() -> None:
    loop = Loop(policy(cooldown=10), 1)
    loop.run(3, inflight=64)
    assert loop.replicas == 3
    changes = loop.run(30, inflight=0)
    # The last window mean with load in it is 2 s (the window) after the load stopped;
    # the cooldown of 10 s counts from there, and the next sample decides.
    assert changes == [(12.5, 1)]
    assert loop.reasons == ["load", "idle"]


def test_a_spike_within_the_cooldown_holds_the_replicas() -> None:
    loop = Loop(policy(cooldown=10), 3)
    loop.run(12, inflight=12)  # three replicas' worth; steady
    assert loop.replicas == 3
    assert loop.run(8, inflight=0) == []
    assert loop.run(3, inflight=12) == []  # back before the cooldown of low load ended
    assert loop.run(9, inflight=0) == []  # the burst is still inside the cooldown
    # Down as the burst's window means leave the cooldown: first to what its tail needs,
    # then, a cooldown after that change, to the minimum.
    assert loop.run(30, inflight=0) == [(2.5, 2), (12.5, 1)]


def test_hysteresis_between_the_up_and_the_down_thresholds() -> None:
    loop = Loop(policy(hi=4, target=4, cooldown=5), 1)
    assert loop.run(10, inflight=5) == [(0.5, 2)]  # over 4 per replica: up
    # 4 in flight would fit one replica at the target, but not with the 80 % headroom a
    # scale-down keeps: it stays at 2 (no flapping between 1 and 2).
    assert loop.run(60, inflight=4) == []
    # 3 <= 0.8 * 4: down, a cooldown (5 s) after the last window mean above 3.2 (1.5 s
    # in, while the window still held samples of 4).
    assert loop.run(60, inflight=3) == [(7.0, 1)]


def test_no_scale_down_while_replicas_start_or_a_version_is_replaced() -> None:
    loop = Loop(policy(cooldown=5), 3)
    assert loop.run(30, inflight=0, settling=True) == []
    assert loop.run(30, inflight=64, settling=True) == []  # already at max; up is allowed
    loop = Loop(policy(cooldown=5), 1)
    assert loop.run(1, inflight=64, settling=True) == [(0.5, 3)]
    changes = loop.run(15, inflight=0, settling=False)  # settled: down after a cooldown
    assert len(changes) == 1 and changes[0][0] >= 5 and changes[0][1] == 1


def test_bounds_are_enforced_whatever_the_count_was() -> None:
    loop = Loop(policy(lo=2, hi=3), 5)
    assert loop.run(0.5, inflight=0) == [(0.5, 3)] and loop.reasons == ["bounds"]
    loop = Loop(policy(lo=2, hi=3), 1)
    assert loop.run(0.5, inflight=0) == [(0.5, 2)]
    assert loop.run(60, inflight=0) == []  # idle, but never below the minimum


def test_scale_to_zero_and_back_on_a_held_request() -> None:
    loop = Loop(policy(lo=0, hi=3, cooldown=5), 1)
    assert loop.run(10, inflight=0) == [(5.5, 0)]  # a cooldown after the first sample
    assert loop.run(5, inflight=0) == []
    # Nothing is in flight (there is no replica); the gateway holds one request.
    assert loop.run(0.5, inflight=0, waiting=1) == [(0.5, 1)]


def test_the_event_carries_the_signal() -> None:
    d = Autoscale(WINDOW, Clock()).decide("m", policy(target=4), 1,
                                          Load(inflight=30, waiting=2, ready=1))
    assert d is not None and d.replicas == 3 and d.reason == "load"
    assert d.signal == {"inflight": 30, "waiting": 2, "ready": 1, "mean_demand": 32.0,
                        "window_s": WINDOW, "per_ready_replica": 32.0, "target_inflight": 4.0}


# -- what a deploy request says ---------------------------------------------------------------
DEFAULTS = ControlSettings(autoscale_target_inflight=8, scale_down_cooldown_s=60)


def test_both_bounds_turn_autoscaling_on_with_the_defaults() -> None:
    count, a = resolve_scaling(Scaling(min_replicas=1, max_replicas=3), None, None, None,
                               DEFAULTS)
    assert count == 1 and a == policy(1, 3, 8, 60)
    count, a = resolve_scaling(Scaling(min_replicas=0, max_replicas=2), None, None, None,
                               DEFAULTS)
    assert count == 0 and a is not None  # starts scaled to zero
    with pytest.raises(ConfigError, match="both --min-replicas and --max-replicas"):
        resolve_scaling(Scaling(max_replicas=3), None, None, None, DEFAULTS)
    with pytest.raises(ConfigError, match="above --max-replicas"):
        resolve_scaling(Scaling(min_replicas=4, max_replicas=3), None, None, None, DEFAULTS)
    with pytest.raises(ConfigError, match="outside"):
        resolve_scaling(Scaling(min_replicas=1, max_replicas=3), 5, None, None, DEFAULTS)


def test_a_redeploy_keeps_autoscaling_and_an_explicit_count_turns_it_off() -> None:
    current = policy(1, 3, 4, 10)
    assert resolve_scaling(None, None, 2, current, DEFAULTS) == (2, current)
    assert resolve_scaling(Scaling(), None, 2, current, DEFAULTS) == (2, current)
    count, a = resolve_scaling(Scaling(max_replicas=5), None, 2, current, DEFAULTS)
    assert count == 2 and a == policy(1, 5, 4, 10)  # one bound changes, the rest stays
    count, a = resolve_scaling(Scaling(min_replicas=3), None, 2, current, DEFAULTS)
    assert count == 3  # the count moves into the new bounds at once
    assert resolve_scaling(None, 2, 3, current, DEFAULTS) == (2, None)


def test_a_fixed_count_says_autoscaling_is_off() -> None:
    auto = DeploymentSpec(model="m", ref="1", version=1, replicas=2, port=8000,
                          autoscale=policy(1, 3))
    fixed = auto.model_copy(update={"replicas": 4, "autoscale": None})
    notice = autoscale_notice(auto, fixed)
    assert notice is not None and notice.startswith("autoscaling off: fixed at 4 replica(s)")
    assert "--min-replicas 1 --max-replicas 3" in notice
    assert autoscale_notice(auto, auto) is None and autoscale_notice(None, fixed) is None
    with pytest.raises(ValueError, match="0 replicas needs autoscaling"):
        DeploymentSpec(model="m", ref="1", version=1, replicas=0, port=8000)
    with pytest.raises(ValueError, match="0 replicas needs autoscaling"):
        DeploymentSpec(model="m", ref="1", version=1, replicas=0, port=8000,
                       autoscale=policy(1, 3))


# -- the signal, from what a gateway shows ----------------------------------------------------
A, B, C, S = (f"http://127.0.0.1:{p}" for p in (9001, 9002, 9003, 9009))


def _shown(seconds: dict[str, float], outstanding: int = 0,
           waiting: dict[str, int] | None = None) -> dict[str, object]:
    """A gateway's GET /admin/routes: ``seconds``, each replica's request-seconds so far."""
    return {
        "etag": "x", "policy": "least_outstanding",
        "routes": {"deployments": {
            "m": {"groups": [{"version": 1, "weight": 100, "replicas": [A, B]}],
                  "shadow": {"version": 2, "replicas": [S]}},
            "other": {"groups": [{"version": 1, "weight": 100, "replicas": [C]}]}},
            "secrets": {}},
        "replicas": {u: {"healthy": True, "outstanding": outstanding, "requests": 0,
                         "errors": 0, "inflight_s": seconds.get(u, 0.0)} for u in (A, B, C, S)},
        "waiting": waiting or {},
    }


def test_in_flight_is_the_mean_over_the_interval_of_the_deployments_replicas() -> None:
    clock = Clock()
    reader = LoadReader(clock)
    # The first read of a gateway has no interval: what is outstanding at that instant.
    first = reader.read("m", {"gw": _shown({A: 10.0, B: 5.0}, outstanding=3)}, {"m"}, 2)
    assert first == Load(inflight=6, waiting=0, ready=2)  # A and B; not the shadow S, not C
    clock.advance(2.0)
    # 12 request-seconds in 2 s: 6 in flight on average, whatever was outstanding at the
    # instant of the read (a closed-loop client's waves make that 0 or everything).
    shown = _shown({A: 18.0, B: 9.0, C: 500.0, S: 90.0}, outstanding=0, waiting={"m": 2})
    assert reader.read("m", {"gw": shown}, {"m"}, 2) == Load(inflight=6, waiting=2, ready=2)
    clock.advance(1.0)
    # Two gateways; the second is read for the first time; a gateway that did not answer
    # gives nothing.
    two = {"gw": _shown({A: 19.0, B: 10.0}), "gw2": _shown({}, outstanding=1), "gw3": None}
    assert reader.read("m", two, {"m"}, 2) == Load(inflight=2 + 2, waiting=0, ready=2)
    clock.advance(1.0)
    # The gateway restarted (its counts went back): the instant count again.
    assert reader.read("m", {"gw": _shown({A: 1.0}, outstanding=1)}, {"m"}, 2) == Load(
        inflight=2, waiting=0, ready=2)
    assert reader.read("m", {"gw": {"routes": 3}}, {"m"}, 2) is None
    assert reader.read("m", {}, {"m"}, 2) is None


# -- a deployment scaled to zero --------------------------------------------------------------
def test_scaled_to_zero_routes_an_empty_pool_and_retires_every_replica() -> None:
    spec = DeploymentSpec(model="m", ref="1", version=1, replicas=0, port=8000,
                          autoscale=policy(0, 3))
    routes, traffic, serving = compute_routes("m", spec, [])
    assert routes is not None and routes.deployments["m"].groups[0].replicas == []
    assert traffic == [{"version": 1, "weight": 100.0, "replicas": 0}] and serving == set()
    last = Replica("m-v1-1", 1, 9001, 1, 0.0, state="ready")
    routes, _, serving = compute_routes("m", spec, [last])
    assert routes is not None and routes.deployments["m"].groups[0].replicas == []
    assert to_retire(spec, [last], serving) == {"m-v1-1"}
    # Scaled up from zero: nothing is routed (the pool stays empty, requests stay held)
    # until the new replica is ready.
    one = spec.model_copy(update={"replicas": 1})
    assert compute_routes("m", one, [Replica("m-v1-2", 1, 9002, 2, 1.0)])[0] is None
