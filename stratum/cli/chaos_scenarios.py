"""The fault scenarios of ``stratum chaos``: what each does to a live deployment, when it
cannot run there (and says why), and how many failed requests it may cost (its bar).

Each ``run`` injects its fault while the load runs, waits until the deployment has
recovered (ready on the wanted generation, every wanted replica and gateway live, the
killed process gone) and returns ``(seconds from the fault to recovery, a note)``; a wait
that runs out raises ``NotRecovered``. What a scenario changes in the wanted state is put
back afterwards by the runner (``Target.restore``).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stratum.cli.chaos_load import Load
from stratum.cli.chaos_services import (
    ensure_postgres,
    ensure_redis,
    local_postgres,
    local_redis,
    restart_postgres,
    restart_redis,
)
from stratum.cli.chaos_target import NotRecovered, Target, alive

STANDBY_WAIT_S = 5.0  # issue 13: a standby leads within 5 s of the leader's death
ALIAS = "chaos"  # the alias the hot-swap scenario moves (never production)
CANARY_PERCENT = 20
CANARY_HOLD_S = 2.0


@dataclass(frozen=True)
class Options:
    concurrency: int = 8
    duration: float = 10.0  # seconds of load per scenario, at least
    timeout: float = 60.0  # for each wait (recovery, a rollout)
    include_services: bool = False
    gap_s: float = 3.0  # between the two kills of replica-kill-2


Run = Callable[[Target, Options, Load], tuple[float, str]]
Skip = Callable[[Target, Options], "str | None"]


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    run: Run
    skip: Skip
    bar: Callable[[Options], int] = lambda _o: 0  # failed requests allowed
    feedback: bool = False  # the load posts feedback too


# -- helpers ------------------------------------------------------------------------------------
def _primary(t: Target) -> list[dict[str, Any]]:
    version = int(t.doc()["spec"]["version"])
    return sorted((r for r in t.replicas() if int(r["version"]) == version),
                  key=lambda r: str(r["id"]))


def _pids(t: Target) -> set[int]:
    obs = t.doc()["observed"]
    return {int(p["pid"]) for p in [*obs.get("replicas", []), *obs.get("gateways", [])]}


def _only(t: Target, version: int) -> bool:
    """Ready, and every replica serves ``version``."""
    reps = t.doc()["observed"].get("replicas", [])
    return t.settled() and bool(reps) and all(int(r["version"]) == version for r in reps)


def _timed(t: Target, o: Options, what: str, act: Callable[[], int | None],
           done: Callable[[], bool]) -> float:
    """Seconds from ``act`` (which may return the generation it wrote) until ``done``."""
    t0 = time.monotonic()
    gen = act()
    t.wait(what, lambda: (gen is None or t.doc()["generation"] >= gen) and done(), o.timeout)
    return time.monotonic() - t0


def _pause(t: Target, seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    t.wait(what, lambda: time.monotonic() >= end, seconds + 5)


# -- replicas ----------------------------------------------------------------------------------
def _replicas_needed(n: int) -> Skip:
    def skip(t: Target, _o: Options) -> str | None:
        have = len(_primary(t))
        return None if have >= n else (f"needs {n} ready replicas of the deployed version; "
                                       f"it has {have}")
    return skip


def replica_kill(t: Target, o: Options, _load: Load) -> tuple[float, str]:
    reps = _primary(t)
    victim = reps[0]
    pid = int(victim["pid"])
    t.signal(pid, "stratum.serve", int(victim["port"]), signal.SIGKILL)
    secs = t.wait_settled(o.timeout, {pid}, f"a replacement for {victim['id']}")
    note = f"SIGKILL {victim['id']} (pid {pid}); a replacement is ready"
    if len(reps) == 1:
        note += "; it was the only replica: nothing serves until its replacement is ready"
    return secs, note


def replica_kill_2(t: Target, o: Options, _load: Load) -> tuple[float, str]:
    a, b = _primary(t)[:2]
    t0 = time.monotonic()
    t.signal(int(a["pid"]), "stratum.serve", int(a["port"]), signal.SIGKILL)
    _pause(t, o.gap_s, f"{o.gap_s:g} s before the second kill")
    t.signal(int(b["pid"]), "stratum.serve", int(b["port"]), signal.SIGKILL)
    t.wait_settled(o.timeout, {int(a["pid"]), int(b["pid"])}, "replacements for both")
    return time.monotonic() - t0, (f"SIGKILL {a['id']}, then {b['id']} {o.gap_s:g} s later; "
                                   "replacements for both are ready")


# -- gateways ----------------------------------------------------------------------------------
def _gateway_live(t: Target, _o: Options) -> str | None:
    return None if t.gateways() else "no live gateway"


def _gateway(sig: signal.Signals) -> Run:
    def run(t: Target, o: Options, _load: Load) -> tuple[float, str]:
        gws = t.gateways()
        victim = min(gws, key=lambda g: int(g["slot"]))
        pid = int(victim["pid"])
        t.signal(pid, "stratum.gateway", int(victim["port"]), sig)
        secs = t.wait_settled(o.timeout, {pid}, f"gateway {victim['slot']} back")
        note = f"{sig.name} gateway {victim['slot']} (pid {pid}) of {len(gws)}; restarted"
        if len(gws) == 1:
            note += ("; it was the only one: connections are refused until it is back "
                     "(deploy --gateways 2)")
        return secs, note
    return run


# -- the control plane -------------------------------------------------------------------------
def _has_leader(t: Target, _o: Options) -> str | None:
    return None if t.leader() is not None else \
        "no control plane of this home runs on this host (nothing to kill here)"


def control_kill(t: Target, o: Options, _load: Load) -> tuple[float, str]:
    lead = t.leader()
    assert lead is not None  # checked by the skip
    before, mark, pid = _pids(t), t.last_event_id(), lead["pid"]
    # The CLI starts it as stratum.web (the API with the dashboard); by hand it may be bare.
    t.signal(pid, "stratum.control", None, signal.SIGKILL, "stratum.web")
    t0 = time.monotonic()
    t.wait("the control plane to die", lambda: not alive(pid), 10)
    how = "restarted it"
    if str(t.settings.metadata_url).startswith("postgresql"):  # standbys may wait
        try:
            t.wait("a standby to lead", lambda: t.leads_anew(lead["term"], pid), STANDBY_WAIT_S)
            how = "a standby took over"
        except NotRecovered:
            how = f"no standby led within {STANDBY_WAIT_S:g} s: restarted one"
            t.connect()
    else:  # one instance per home (SQLite): what a user does, run any command
        t.connect()
    t.wait("a new leader", lambda: t.leads_anew(lead["term"], pid), o.timeout)
    led = time.monotonic() - t0
    t.connect()  # the API calls of later scenarios go to the new leader
    t.wait("the new leader to adopt the deployment",
           lambda: bool(t.events_since(mark, "deployment.adopted")) and t.settled(), o.timeout)
    adopted = t.events_since(mark, "deployment.adopted")[0]
    kept = {*adopted.get("replicas", []), *adopted.get("gateways", [])}
    same = "the same processes" if kept == before else \
        f"{len(before - kept)} of {len(before)} processes not adopted"
    return time.monotonic() - t0, (
        f"SIGKILL leader pid {pid}; {how}, leading after {led:.1f} s; it adopted "
        f"{len(adopted.get('replicas', []))} replicas and {len(adopted.get('gateways', []))} "
        f"gateways ({same})")


# -- changes of the wanted state ---------------------------------------------------------------
def _second_version(t: Target, _o: Options) -> str | None:
    return None if t.other_version() is not None else \
        f"needs a second registered version of {t.model} to move to"


def rolling_update(t: Target, o: Options, _load: Load) -> tuple[float, str]:
    a, b = int(t.original["version"]), t.other_version()
    assert b is not None
    up = _timed(t, o, f"rolled onto v{b}", lambda: t.deploy(model=f"{t.model}@{b}"),
                lambda: _only(t, b))
    back = _timed(t, o, f"rolled back to v{a}",
                  lambda: t.call("POST", f"/deployments/{t.name}/rollback"),
                  lambda: _only(t, a))
    return up + back, (f"v{a}→v{b} in {up:.1f} s (new replicas, traffic moved, old drained); "
                       f"`rollback` to v{a} in {back:.1f} s")


def alias_swap(t: Target, o: Options, _load: Load) -> tuple[float, str]:
    a, b = int(t.original["version"]), t.other_version()
    assert b is not None
    t.set_alias(ALIAS, a)
    _timed(t, o, f"following {t.model}@{ALIAS}",
           lambda: t.deploy(model=f"{t.model}@{ALIAS}", follow=True), t.settled)
    pids = {int(r["pid"]) for r in t.replicas()}

    def move(version: int) -> float:
        return _timed(t, o, f"hot swap to v{version}",
                      lambda: t.set_alias(ALIAS, version),
                      lambda: int(t.doc()["spec"]["version"]) == version and _only(t, version))

    there, back = move(b), move(a)
    same = pids == {int(r["pid"]) for r in t.replicas()}
    return there + back, (
        f"alias {ALIAS} v{a}→v{b}: hot-swapped in {there:.1f} s, back in {back:.1f} s "
        f"({'in the same replica processes' if same else 'replicas were replaced'})")


def canary_rollback(t: Target, o: Options, load: Load) -> tuple[float, str]:
    a, b = int(t.original["version"]), t.other_version()
    assert b is not None
    up = _timed(t, o, f"canary v{b} ready",
                lambda: t.deploy(model=f"{t.model}@{a}",
                                 canary=f"{t.model}@{b}:{CANARY_PERCENT}"),
                lambda: t.settled() and any(int(r["version"]) == b for r in t.replicas()))
    seen = Counter(load.tally.versions)
    _pause(t, CANARY_HOLD_S, f"canary v{b} serving")
    got = load.tally.versions - seen
    share = got[str(b)] / max(1, sum(got.values()))
    back = _timed(t, o, "canary rolled back", lambda: t.deploy(model=f"{t.model}@{a}"),
                  lambda: _only(t, a))
    return up + back, (f"canary v{b} at {CANARY_PERCENT} % ready in {up:.1f} s, answered "
                       f"{share:.0%} of {sum(got.values())} in {CANARY_HOLD_S:g} s; rolled "
                       f"back (deployed v{a} without it) in {back:.1f} s")


# -- the learner and the services ------------------------------------------------------------
def _has_learner(t: Target, _o: Options) -> str | None:
    found = t.learners()
    if not found:
        return f"no `stratum learn {t.model}` of this home runs on this host"
    if (up := t.owner(found[0][0])) is not None:
        return (f"the learner belongs to `stratum up` (pid {up}), which stops everything "
                f"when its learner dies; run `stratum learn {t.model}` yourself to try it")
    return None


def learner_kill(t: Target, o: Options, load: Load) -> tuple[float, str]:
    pid, options = t.learners()[0]
    t.wait("feedback flowing", lambda: load.tally.feedback >= 10, o.timeout)
    t.signal(pid, "learn", None, signal.SIGKILL)
    t0 = time.monotonic()
    t.wait("the learner to die", lambda: not alive(pid), 10)
    mark = t.last_event_id()
    new = t.start_learner(options)
    t.wait("the restarted learner's first decision",
           lambda: bool(t.events_since(mark, "online.decision", subject=t.model)), o.timeout)
    vt = t.settings.online.visibility_timeout_s
    return time.monotonic() - t0, (
        f"SIGKILL learner pid {pid} while feedback flowed; restarted it (pid {new}), which "
        f"made its first decision; feedback the killed one held comes back after "
        f"online.visibility_timeout_s ({vt:g} s)")


def _services(flag_ok: Callable[[Target], bool], what: str) -> Skip:
    def skip(t: Target, o: Options) -> str | None:
        if not flag_ok(t):
            return f"the deployment does not use this machine's {what}"
        if not o.include_services:
            return f"restarts this machine's {what} for every user: pass --include-services"
        return None
    return skip


def redis_restart(t: Target, o: Options, load: Load) -> tuple[float, str]:
    t0 = time.monotonic()
    try:
        restart_redis()
        back = time.monotonic()
        t.wait("feedback accepted again",
               lambda: (load.tally.last_feedback_ok or 0) > back and t.settled(), o.timeout)
    finally:
        ensure_redis()
    return time.monotonic() - t0, (f"redis-cli shutdown nosave, then started again (down "
                                   f"{back - t0:.1f} s; unpersisted streams are lost)")


def postgres_restart(t: Target, o: Options, _load: Load) -> tuple[float, str]:
    lead = t.leader()
    t0 = time.monotonic()
    try:
        restart_postgres()
        down = time.monotonic() - t0
        # A leader that lost its lease connection exits (leaving its processes); give it
        # the time to notice before asking who leads.
        _pause(t, 2 * t.settings.control.lease_poll_s + 0.5, "the leader to check its lease")
        try:
            t.wait("a leader", t.leading, STANDBY_WAIT_S)
        except NotRecovered:
            pass  # nobody leads: connect() starts one
        t.connect()  # whoever leads now
        t.wait_settled(o.timeout)
    finally:
        ensure_postgres()
    return time.monotonic() - t0, f"pg_ctlcluster restart (took {down:.1f} s); " + \
        _who_leads(lead, t.leader())


def _who_leads(before: dict[str, Any] | None, now: dict[str, Any] | None) -> str:
    if now is None:
        return "no leader of this home on this host now"
    if before is None or now["pid"] != before["pid"]:
        return f"a new leader leads (pid {now['pid']}, term {now['term']})"
    if now["term"] != before["term"]:
        return f"the leader lost its lease and took it again (term {now['term']})"
    return "the leader kept its lease"


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("replica-kill", "SIGKILL one replica", replica_kill, _replicas_needed(1)),
    Scenario("replica-kill-2", "SIGKILL two replicas in a row (--gap apart)", replica_kill_2,
             _replicas_needed(2)),
    Scenario("gateway-term", "SIGTERM one gateway (it drains)", _gateway(signal.SIGTERM),
             _gateway_live),
    Scenario("gateway-kill", "SIGKILL one gateway", _gateway(signal.SIGKILL), _gateway_live,
             bar=lambda o: o.concurrency),
    Scenario("control-kill", "SIGKILL the leading control plane", control_kill, _has_leader),
    Scenario("rolling-update", "roll to another version, then `rollback`", rolling_update,
             _second_version),
    Scenario("alias-swap", f"follow alias {ALIAS!r}, move it (hot swap) and back",
             alias_swap, _second_version),
    Scenario("canary-rollback", f"a {CANARY_PERCENT} % canary, then roll it back",
             canary_rollback, _second_version),
    Scenario("learner-kill", "SIGKILL the online learner while feedback flows",
             learner_kill, _has_learner, feedback=True),
    Scenario("redis-restart", "restart this machine's Redis (the queue)", redis_restart,
             _services(lambda t: local_redis(t.settings.queue_url), "Redis"), feedback=True),
    Scenario("postgres-restart", "restart this machine's PostgreSQL (the store)",
             postgres_restart,
             _services(lambda t: local_postgres(t.settings.metadata_url), "PostgreSQL"),
             feedback=True),
]}

__all__ = ["SCENARIOS", "Options", "Scenario"]
