"""Fast tests of the control plane's pure parts: deployment specs and the routing rule
that makes rolling updates lossless."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest

from stratum.control.reconcile import alias_move
from stratum.control.routing import compute_routes
from stratum.control.spec import (
    DeploymentSpec,
    build_spec,
    parse_canary,
    pin_notice,
    rolled_back,
)
from stratum.errors import ConfigError, ConflictError, NotFoundError
from stratum.gateway.traffic import RouteTable
from stratum.store import Store
from tests.integration.gateway_fixtures import register_tiny


@dataclass
class R:
    id: str
    version: int
    state: str = "ready"
    started: float = 0.0
    secret: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{9000 + int(self.id)}"


def spec(version: int = 2, replicas: int = 2, **kw: object) -> DeploymentSpec:
    return DeploymentSpec(model="m", ref=str(version), version=version, replicas=replicas,
                          port=8000, **kw)  # type: ignore[arg-type]


def test_old_version_serves_until_the_new_one_is_fully_ready() -> None:
    old = [R("1", 1), R("2", 1)]
    routes, traffic, serving = compute_routes("m", spec(), [*old, R("3", 2)])
    assert routes is not None and serving == {"1", "2"}
    assert traffic == [{"version": 1, "weight": 100.0, "replicas": 2}]
    routes, traffic, serving = compute_routes("m", spec(), [*old, R("3", 2), R("4", 2)])
    assert serving == {"3", "4"} and traffic[0]["version"] == 2


def test_nothing_ready_means_no_routes_and_starting_replicas_never_serve() -> None:
    routes, _, serving = compute_routes("m", spec(), [R("1", 2, state="starting")])
    assert routes is None and serving == set()
    # after a crash the survivors keep serving while the replacement starts
    routes, _, serving = compute_routes("m", spec(), [R("1", 2), R("2", 2, state="starting")])
    assert routes is not None and serving == {"1"}


def test_routes_carry_the_secret_of_each_serving_replica_and_never_show_it() -> None:
    a, b = "a" * 43, "b" * 43  # two generations: a rolling update between them
    reps = [R("1", 1, secret=a), R("2", 2, secret=b), R("3", 2, state="starting", secret=b)]
    routes, _, serving = compute_routes("m", spec(replicas=1), reps)
    assert routes is not None and serving == {"2"}
    assert routes.secrets == {reps[1].url: b}
    routes, _, _ = compute_routes("m", spec(replicas=2), reps)  # v2 not fully up: v1 serves
    assert routes is not None and routes.secrets == {reps[0].url: a}
    table = RouteTable(routes, "round_robin", {})
    shown = orjson.dumps(table.describe())
    assert a.encode() not in shown and table.describe()["routes"]["secrets"] == {  # type: ignore[index]
        reps[0].url: "***"}
    assert a.encode() in table.upstreams[reps[0].url]._fixed  # sent to the replica


def test_canary_and_shadow_groups() -> None:
    s = spec(canary={"ref": "1", "version": 1, "percent": 25},
             shadow={"ref": "3", "version": 3})
    assert s.versions() == {2: 2, 1: 1, 3: 1}
    routes, traffic, serving = compute_routes("m", s, [R("1", 2), R("2", 2), R("3", 1),
                                                       R("4", 3)])
    assert routes is not None
    pool = routes.deployments["m"]
    assert [(g.version, g.weight) for g in pool.groups] == [(2, 75.0), (1, 25.0)]
    assert pool.shadow is not None and pool.shadow.version == 3
    assert serving == {"1", "2", "3", "4"}
    assert traffic[-1]["shadow"] is True


def test_surplus_replicas_leave_the_routes() -> None:
    _, _, serving = compute_routes("m", spec(replicas=1), [R("1", 2, started=1.0),
                                                           R("2", 2, started=2.0)])
    assert serving == {"1"}


def test_a_change_to_a_following_deployment_pins_it_and_says_so(store: Store) -> None:
    for seed in (1, 2, 3):
        register_tiny(store, "f", seed=seed)
    store.meta.set_alias("f", "production", 3)
    follows = build_spec(store.meta, "f@production", current=None, replicas=None, port=None,
                         default_port=8000, follow=True)
    assert follows.follow == "production" and pin_notice(None, follows) is None
    # Scaling or re-deploying the followed alias keeps following.
    same = build_spec(store.meta, "f@production", current=follows, replicas=2, port=None,
                      default_port=8000)
    assert same.follow == "production" and pin_notice(follows, same) is None
    # A fixed version, with or without a canary, pins: following would undo it.
    for change in ({"model_ref": "f@1"}, {"model_ref": "f@2", "canary": "f@3:10"}):
        ref = change.pop("model_ref")
        pinned = build_spec(store.meta, ref, current=follows, replicas=None, port=None,
                            default_port=8000, **change)
        assert pinned.follow is None
        assert alias_move(pinned, {"production": 3}, set()) is None  # nothing undoes it
        notice = pin_notice(follows, pinned)
        assert notice is not None and "no longer follows f@production" in notice
        assert "--follow" in notice
    # Rollback pins too, and says so.
    moved = alias_move(follows.model_copy(update={"version": 2}), {"production": 3}, set())
    assert moved is not None and moved.version == 3
    back = rolled_back(moved)
    assert back.version == 2 and back.follow is None
    assert alias_move(back, {"production": 3}, set()) is None
    assert pin_notice(moved, back) is not None
    # --follow on a fixed version is refused with the reason.
    with pytest.raises(ConfigError, match="--follow needs an alias"):
        build_spec(store.meta, "f@2", current=follows, replicas=None, port=None,
                   default_port=8000, follow=True)


def test_parse_canary() -> None:
    assert parse_canary("m@5:10") == ("m", "5", 10.0)
    for bad in ("m@5", "m@5:0", "m@5:100", "m@5:x"):
        with pytest.raises(ConfigError):
            parse_canary(bad)


def test_build_spec_resolves_and_remembers_previous(store: Store) -> None:
    register_tiny(store, "m", seed=1)
    register_tiny(store, "m", seed=2)
    store.meta.set_alias("m", "production", 1)
    first = build_spec(store.meta, "m@production", current=None, replicas=None, port=None,
                       default_port=8000)
    assert (first.version, first.ref, first.replicas, first.port) == (1, "production", 1, 8000)
    second = build_spec(store.meta, "m@2", current=first, replicas=3, port=None,
                        default_port=8000, canary="m@1:10")
    assert second.previous is not None and second.previous.version == 1
    assert second.canary is not None and second.canary.percent == 10
    back = rolled_back(second)
    assert back.version == 1 and back.previous is not None and back.previous.version == 2
    assert back.canary is None
    with pytest.raises(ConflictError):
        rolled_back(first)
    with pytest.raises(NotFoundError):
        build_spec(store.meta, "m@9", current=None, replicas=None, port=None,
                   default_port=8000)
    with pytest.raises(ConfigError):
        build_spec(store.meta, "m@1", current=None, replicas=None, port=None,
                   default_port=8000, canary="other@1:5")
