"""The supervisor's decisions: from what a deployment wants and what was observed of its
replicas and gateway (``state``) to what to start, stop, swap and push.

Nothing here starts a process, speaks HTTP or writes to the store; ``supervisor`` does,
then tells a ``Reconciler`` what came of it (a process exited, a probe answered, a swap
finished). Time comes from the injected ``clock``, so backoffs and deadlines can be tested
with a fake one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stratum.config.settings import ControlSettings
from stratum.control.routing import to_retire
from stratum.control.spec import DeploymentSpec, followed
from stratum.control.state import DeploymentState, Gateway, Replica
from stratum.gateway.traffic import RoutesSpec

# A replica serving this long since its start counts as stable: its crash backoff resets.
STABLE_S = 30.0


@dataclass(frozen=True)
class Event:
    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Start:
    """Spawn replica ``id`` serving ``version``."""

    id: str
    version: int


@dataclass(frozen=True)
class Stop:
    """Take ``replica`` out of service."""

    replica: Replica
    drain: bool  # ask it to finish what it has first; pointless for one that never served


@dataclass(frozen=True)
class Swap:
    """Hot-swap a running ``replica`` to ``version`` (a followed alias moved)."""

    replica: Replica
    version: int


@dataclass(frozen=True)
class GiveUp:
    """Stop trying ``version``: it never started within the allowed attempts."""

    version: int
    fallback: DeploymentSpec | None  # the wanted state to revert to; None: stop trying
    event: Event


def fallback(spec: DeploymentSpec, bad: int, serving: set[int]) -> DeploymentSpec | None:
    """The wanted state without ``bad``: drop it as canary or shadow, or go back to the
    previous version if that still serves."""
    if spec.canary is not None and spec.canary.version == bad:
        return spec.model_copy(update={"canary": None})
    if spec.shadow is not None and spec.shadow.version == bad:
        return spec.model_copy(update={"shadow": None})
    prev = spec.previous
    if prev is not None and prev.version in serving:
        return spec.model_copy(update={"ref": prev.ref, "version": prev.version,
                                        "previous": None, "canary": None})
    return None


def alias_move(spec: DeploymentSpec | None, aliases: Mapping[str, int],
               given_up: set[int]) -> DeploymentSpec | None:
    """The spec rolled onto where its followed alias points now, if it moved somewhere
    that has not already failed to start."""
    if spec is None or spec.follow is None:
        return None
    target = aliases.get(spec.follow)
    if target is None or target == spec.version or target in given_up:
        return None
    return followed(spec, target)


class Reconciler:
    """Decisions that depend on the control settings and on time."""

    def __init__(self, cfg: ControlSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock

    def backoff(self, n: int) -> float:
        """Seconds to wait before the ``n``-th retry: doubling, capped."""
        return float(min(self.cfg.restart_backoff_max_s,
                         self.cfg.restart_backoff_s * 2 ** max(0, n - 1)))

    def wanted(self, st: DeploymentState, spec: DeploymentSpec | None, generation: int) -> None:
        """A new generation of the wanted state: earlier start failures and crash backoffs
        no longer count, unless it wants the same versions (a scale, the autoscaler's
        writes, a policy change): a crash-looping version must not restart eagerly again
        each time the count moves."""
        same = (st.spec is not None and spec is not None
                and st.spec.versions().keys() == spec.versions().keys())
        st.spec, st.generation = spec, generation
        if not same:
            st.start_failures.clear()
            st.next_start.clear()
            st.give_ups.clear()

    # -- what was observed -------------------------------------------------------------------
    def past_ready_deadline(self, r: Replica) -> bool:
        """A replica still starting after ``ready_timeout_s`` is to be killed (its exit then
        counts as a failed start)."""
        return r.state == "starting" and self.clock() - r.started > self.cfg.ready_timeout_s

    def replica_exited(self, st: DeploymentState, r: Replica, exit_code: int | None,
                       log_tail: str) -> Event:
        now = self.clock()
        del st.replicas[r.id]
        info = {"replica": r.id, "version": r.version, "pid": r.pid, "port": r.port,
                "exit": exit_code}
        if r.state == "draining":
            return Event("replica.stopped", info)
        if r.state == "starting":
            st.start_failures[r.version] += 1
            st.next_start[r.version] = now + self.backoff(st.start_failures[r.version])
            st.last_error = {"generation": st.generation, "version": r.version,
                             "message": f"replica {r.id} of v{r.version} exited before "
                                        f"it was ready: {log_tail[-600:]}"}
            return Event("replica.failed", {**info, "log": log_tail[-600:]})
        st.crash_streak[r.version] += 1
        streak = st.crash_streak[r.version]
        # A replica that served and died once (a SIGKILL, an OOM) is replaced at once: its
        # siblings carry the load meanwhile, and every second costs capacity. Only a crash
        # loop backs off, from the second crash on.
        st.next_start[r.version] = now + (0.0 if streak == 1 else self.backoff(streak - 1))
        return Event("replica.crashed", info)

    def gateway_exited(self, st: DeploymentState, gw: Gateway, log_tail: str) -> Event | None:
        del st.gateways[gw.slot]
        if st.spec is None or st.spec.port != gw.port or gw.slot >= st.spec.gateways:
            return None  # we stopped it: undeployed, moved to another port, or surplus
        st.gateway_failures[gw.slot] += 1
        st.next_start[f"gateway-{gw.slot}"] = self.clock() + self.backoff(
            st.gateway_failures[gw.slot])
        st.last_error = {"generation": st.generation, "message":
                         f"gateway {gw.slot} on port {gw.port} exited: {log_tail[-600:]}"}
        return Event("gateway.crashed", {"pid": gw.pid, "port": gw.port, "slot": gw.slot})

    def probed(self, st: DeploymentState, r: Replica, ok: bool) -> Event | None:
        """A replica's readiness probe answered ``ok`` (or not)."""
        r.healthy = ok
        elapsed = self.clock() - r.started
        if ok and r.state == "starting":
            r.state = "ready"
            st.good_versions.add(r.version)
            st.start_failures[r.version] = 0
            return Event("replica.ready", {"replica": r.id, "version": r.version, "pid": r.pid,
                                           "port": r.port, "seconds": round(elapsed, 2)})
        if ok and elapsed > STABLE_S:
            st.crash_streak[r.version] = 0
        return None

    @staticmethod
    def gateway_probed(st: DeploymentState, gw: Gateway, live: bool) -> Event | None:
        came_up = live and not gw.live
        gw.live = live
        if came_up:
            st.gateway_failures[gw.slot] = 0
            return Event("gateway.ready", {"port": gw.port, "slot": gw.slot, "pid": gw.pid})
        return None

    def swap_done(self, st: DeploymentState, r: Replica, version: int, ok: bool,
                  detail: str, seconds: float) -> Event:
        r.swapping = None
        info = {"replica": r.id, "from": r.version, "to": version, "seconds": round(seconds, 2)}
        if ok:
            r.version = version
            st.good_versions.add(version)
            return Event("replica.swapped", info)
        st.start_failures[version] += 1
        st.next_start[version] = self.clock() + self.backoff(st.start_failures[version])
        st.last_error = {"generation": st.generation, "version": version,
                         "message": f"replica {r.id} could not swap to v{version}: {detail}"}
        return Event("replica.swap_failed", {**info, "error": detail})

    # -- what to do --------------------------------------------------------------------------
    def give_up(self, st: DeploymentState, spec: DeploymentSpec) -> GiveUp | None:
        """A version that never got ready after ``start_attempts`` starts: revert the wanted
        state to what still serves (or, on a first deploy, stop trying). With nothing to
        revert to, the spec keeps wanting the version: that is said once per generation,
        not every tick (a revert ends the generation, so it is said again only if the
        revert could not be written)."""
        for version in spec.versions():
            if version in st.good_versions or \
                    st.start_failures[version] < self.cfg.start_attempts:
                continue
            serving = {r.version for r in st.replicas.values() if r.state == "ready"}
            back = fallback(spec, version, serving)
            before = st.give_ups.get(version)
            if back is None and before is not None and before[0] == st.generation:
                continue
            # A generation that wants it again without new attempts (a scale) fails with
            # the same error, not with the previous give-up's message wrapped in another.
            reason = before[1] if before else (st.last_error or {}).get(
                "message", "it never became ready")
            st.give_ups[version] = (st.generation, reason)
            outcome = "kept serving the current version" if back else "gave up"
            st.last_error = {"generation": st.generation, "version": version,
                             "message": f"v{version} of {spec.model} failed to start "
                                        f"{st.start_failures[version]} times; {outcome}. "
                                        f"Last error: {reason}"}
            st.given_up.add(version)
            if back is None:
                st.next_start[version] = float("inf")
            return GiveUp(version, back, Event("deployment.update_failed", st.last_error))
        return None

    def to_swap(self, st: DeploymentState, spec: DeploymentSpec) -> list[Swap]:
        """A deployment that follows an alias moves in place: each ready replica of an
        older version loads the new one beside it and switches when warm (no new
        process, no request lost); traffic stays on the old version until it has."""
        if spec.follow is None or self.clock() < st.next_start.get(spec.version, 0.0):
            return []
        wanted = spec.versions()
        swaps = []
        for r in st.replicas.values():
            if r.state == "ready" and r.swapping is None and r.version not in wanted:
                r.swapping = spec.version
                swaps.append(Swap(r, spec.version))
        return swaps

    def to_start(self, st: DeploymentState, spec: DeploymentSpec) -> list[Start]:
        """New replicas for every wanted version short of its count, unless it backs off.
        A replica swapping to a version counts for it."""
        now = self.clock()
        starts = []
        for version, wanted in spec.versions().items():
            active = [r for r in st.replicas.values()
                      if version in (r.version, r.swapping) and r.state in ("starting", "ready")]
            if len(active) >= wanted or now < st.next_start.get(version, 0.0):
                continue
            for _ in range(wanted - len(active)):
                st.seq += 1
                starts.append(Start(f"{st.name}-v{version}-{st.seq}", version))
        return starts

    def started(self, st: DeploymentState, start: Start, port: int, pid: int,
                secret: str = "", scheme: str = "http", host: str = "127.0.0.1") -> Event:
        st.replicas[start.id] = Replica(start.id, start.version, port, pid, self.clock(),
                                        secret=secret, scheme=scheme, host=host)
        return Event("replica.started", {"replica": start.id, "version": start.version,
                                         "pid": pid, "port": port, "host": host})

    def gateway_actions(self, st: DeploymentState,
                        spec: DeploymentSpec) -> tuple[list[int], list[Gateway]]:
        """``(slots to start, gateways to stop)``: a missing one starts after its backoff;
        one on a port no longer wanted, or beyond ``spec.gateways``, stops (on a new port
        the new ones start once the old have exited, so the port is never doubly held by
        deployments)."""
        stop = [g for g in st.gateways.values()
                if g.port != spec.port or g.slot >= spec.gateways]
        if any(g.port != spec.port for g in st.gateways.values()):
            return [], stop
        now = self.clock()
        start = [slot for slot in range(spec.gateways) if slot not in st.gateways
                 and now >= st.next_start.get(f"gateway-{slot}", 0.0)]
        return start, stop

    @staticmethod
    def gateway_started(st: DeploymentState, slot: int, port: int, admin_port: int, pid: int,
                        scheme: str = "http") -> Event:
        st.gateways[slot] = Gateway(slot, pid, port, admin_port, scheme=scheme)
        return Event("gateway.started", {"pid": pid, "port": port, "slot": slot,
                                         "admin_port": admin_port})

    @staticmethod
    def to_push(st: DeploymentState, routes: RoutesSpec,
                sharing: Iterable[Gateway] = ()) -> list[Gateway]:
        """The gateways that are up and lack this routing table: the deployment's own and
        those of the other deployments on its port (``sharing``), which get its requests
        too."""
        etag = routes.etag()
        return [g for g in (*st.gateways.values(), *sharing)
                if g.live and g.pushed.get(st.name) != etag]

    @staticmethod
    def pushed(st: DeploymentState, gw: Gateway, routes: RoutesSpec,
               traffic: list[dict[str, Any]]) -> Event | None:
        """``gw`` took ``routes``; the event once the traffic split changed."""
        gw.pushed[st.name] = routes.etag()
        if traffic == st.traffic:
            return None
        st.traffic = traffic
        return Event("deployment.routes", {"traffic": traffic})

    @staticmethod
    def acknowledged(st: DeploymentState, routes: RoutesSpec | None,
                     sharing: Iterable[Gateway] = ()) -> bool:
        """Whether the gateways hold ``routes`` (the table of the replicas as they are):
        every live one on the port, the deployment's and ``sharing`` (one still starting
        reads the latest tables from the store before it serves), and at least one."""
        if routes is None:
            return False
        live = [g for g in (*st.gateways.values(), *sharing) if g.live]
        return bool(live) and all(g.pushed.get(st.name) == routes.etag() for g in live)

    @staticmethod
    def to_stop(st: DeploymentState, spec: DeploymentSpec | None, routes: RoutesSpec | None,
                serving: set[str], sharing: Iterable[Gateway] = ()) -> list[Stop]:
        """Replicas to stop. Undeployed: all of them. Otherwise nothing until the gateway
        acknowledged ``routes``; then the ready ones it no longer names, and those still
        starting of versions no longer wanted."""
        if spec is None:
            return [Stop(r, drain=False) for r in st.replicas.values()]
        if not Reconciler.acknowledged(st, routes, sharing):
            return []
        # Not "every ready replica outside the table": a new version's replica that is
        # ready while its siblings still start must stay (to_retire knows).
        retire = to_retire(spec, st.replicas.values(), serving)
        stops = []
        for r in st.replicas.values():
            if r.id in retire:
                stops.append(Stop(r, drain=True))
            elif r.state == "starting" and r.version not in spec.versions():
                stops.append(Stop(r, drain=False))
        return stops

    @staticmethod
    def retiring(r: Replica) -> bool:
        """Mark ``r`` draining; False when it already was (it is being stopped)."""
        if r.state == "draining":
            return False
        r.state = "draining"
        return True
