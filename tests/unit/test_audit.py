"""The audit log: the store on SQLite and the machine's PostgreSQL, the migration from an
existing 0002 database, the gateway's audited /admin/* (in process, real store), the
``stratum audit`` command. The control plane, a supervised gateway and replicas are
audited as real processes in ``tests/integration/test_deploy_reliability.py``."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import event, inspect, text, update
from typer.testing import CliRunner

import stratum.store.db
from stratum.cli.audit import parse_since
from stratum.cli.main import app
from stratum.config import Settings, load_settings
from stratum.config.settings import ControlSettings
from stratum.control.metrics import ControlMetrics
from stratum.control.retention import AuditRetention
from stratum.errors import AuthError, ConfigError
from stratum.gateway import Gateway, GroupSpec, PoolSpec, RoutesSpec
from stratum.security.access import KeyChecker
from stratum.security.keys import generate_key, hash_key
from stratum.store import MetadataStore, Store
from stratum.store.audit import AuditEntry, AuditLog, Auditor
from stratum.store.db import current_revision, head_revision, make_engine
from stratum.store.models import AuditRecord

STRATUM = str(Path(sys.executable).with_name("stratum"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def meta(db_url: str) -> Iterator[MetadataStore]:
    store = MetadataStore.open(db_url)
    yield store
    store.close()


def _entry(actor: str, action: str, outcome: int = 200, component: str = "control",
           **detail: object) -> AuditEntry:
    return AuditEntry(actor, "127.0.0.1:5000", component, action, "tiny", outcome, detail)


def test_records_come_back_newest_first_and_filtered(meta: MetadataStore) -> None:
    log = AuditLog(meta)
    log.write(_entry("key:aa11 ops", "deploy", before=None, after={"version": 1}))
    log.write(_entry("anonymous", "scale", 401))
    log.write(_entry("supervisor", "routes.put", component="gateway", replicas=2))
    log.write(_entry("key:aa11 ops", "keys.create", component="cli"))
    assert [e.action for e in log.entries()] == ["keys.create", "routes.put", "scale", "deploy"]
    first = log.entries()[-1]
    assert first.detail == {"before": None, "after": {"version": 1}}
    assert first.ts is not None and first.ts.tzinfo is not None
    assert abs((datetime.now(UTC) - first.ts).total_seconds()) < 60
    assert [e.action for e in log.entries(actor="aa11")] == ["keys.create", "deploy"]
    assert [e.outcome for e in log.entries(action="scale")] == [401]
    assert [e.action for e in log.entries(action="keys.*")] == ["keys.create"]
    assert [e.actor for e in log.entries(component="gateway")] == ["supervisor"]
    assert len(log.entries(limit=2)) == 2
    assert log.entries(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert len(log.entries(since=datetime.now(UTC) - timedelta(minutes=1))) == 4
    assert log.entries(actor="%") == []  # a filter is text, not a pattern


def test_a_detail_never_keeps_a_secret(meta: MetadataStore) -> None:
    log = AuditLog(meta)
    log.write(_entry("supervisor", "routes.put", secrets={"http://r": "s3cret-value"},
                     nested=[{"admin_token": "sk_x_y", "replicas": 2}], key_hash="sha256$"))
    (e,) = log.entries()
    assert e.detail == {"secrets": "***", "nested": [{"admin_token": "***", "replicas": 2}],
                        "key_hash": "***"}


def test_a_failed_write_is_logged_and_never_raised(
        meta: MetadataStore, caplog: pytest.LogCaptureFixture) -> None:
    with meta.engine.begin() as conn:  # a store that cannot take the record
        conn.execute(text("DROP TABLE audit_log"))
    auditor = Auditor("replica", AuditLog(meta))
    with caplog.at_level(logging.INFO, logger="stratum.audit"):
        asyncio.run(auditor.record("supervisor", "127.0.0.1:1", "drain", "tiny", 200,
                                   {"drained": True}))
    (rec,) = (r for r in caplog.records if r.name == "stratum.audit")
    assert rec.levelno == logging.ERROR and "not stored" in rec.getMessage()
    assert rec.audit["action"] == "drain" and rec.audit["component"] == "replica"  # type: ignore[attr-defined]


def test_a_flood_of_refusals_is_coalesced_and_counted(meta: MetadataStore) -> None:
    auditor = Auditor("replica", AuditLog(meta), refusal_window_s=0.3)

    async def flood() -> None:
        for port in range(40_000, 40_050):  # a new connection per attempt
            await auditor.record("anonymous", f"10.0.0.7:{port}", "drain", "tiny", 401)
        await auditor.record("anonymous", "10.0.0.8:1", "drain", "tiny", 401)  # another host
        await auditor.record("supervisor", "127.0.0.1:2", "drain", "tiny", 200)
        await auditor.record("supervisor", "127.0.0.1:3", "drain", "tiny", 200)  # never held
        await asyncio.sleep(0.35)
        await auditor.record("anonymous", "10.0.0.7:41000", "drain", "tiny", 401)

    asyncio.run(flood())
    got = [(e.source, e.outcome, e.detail) for e in reversed(AuditLog(meta).entries())]
    assert got == [("10.0.0.7:40000", 401, {}), ("10.0.0.8:1", 401, {}),
                   ("127.0.0.1:2", 200, {}), ("127.0.0.1:3", 200, {}),
                   ("10.0.0.7:41000", 401, {"repeated": 49})]


def _aged(meta: MetadataStore, days: float, actions: set[str]) -> None:
    """Backdate the records of ``actions`` by ``days``, as if written then."""
    with meta.engine.begin() as conn:
        conn.execute(update(AuditRecord).where(AuditRecord.action.in_(actions))
                     .values(ts=datetime.now(UTC) - timedelta(days=days)))


def test_prune_deletes_only_older_records_in_bounded_batches(meta: MetadataStore) -> None:
    log = AuditLog(meta)
    for action in ("old1", "old2", "old3", "edge", "new1", "new2"):
        log.write(_entry("supervisor", action))
    _aged(meta, 100, {"old1", "old2", "old3"})
    _aged(meta, 89, {"edge"})  # inside 90 days: kept
    deletes: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(statement)

    event.listen(meta.engine, "before_cursor_execute", seen)
    try:
        gone = log.prune(datetime.now(UTC) - timedelta(days=90), batch=2)
    finally:
        event.remove(meta.engine, "before_cursor_execute", seen)
    assert gone == 3
    assert len(deletes) == 2 and all("LIMIT" in d.upper() for d in deletes), deletes  # 2 + 1
    assert sorted(e.action for e in log.entries()) == ["edge", "new1", "new2"]
    assert log.prune(datetime.now(UTC) - timedelta(days=90)) == 0


def test_the_leader_prunes_by_control_audit_retention_days(
        meta: MetadataStore, caplog: pytest.LogCaptureFixture) -> None:
    log, metrics = AuditLog(meta), ControlMetrics()
    for action in ("ancient", "stale", "recent"):
        log.write(_entry("key:aa11 ops", action))
    _aged(meta, 3650, {"ancient"})
    _aged(meta, 31, {"stale"})
    _aged(meta, 29, {"recent"})

    forever = AuditRetention(ControlSettings(audit_retention_days=0), log, metrics)
    assert asyncio.run(forever.prune()) == 0
    assert len(log.entries()) == 3  # 0 keeps everything, however old

    keep30 = AuditRetention(ControlSettings(audit_retention_days=30), log, metrics)
    with caplog.at_level(logging.INFO, logger="stratum.control.retention"):
        assert asyncio.run(keep30.prune()) == 2
    assert [e.action for e in log.entries()] == ["recent"]
    assert "audit log: pruned 2 records older than 30 days" in caplog.text
    assert metrics.registry.get_sample_value("stratum_control_audit_pruned_total") == 2

    async def leading() -> list[str]:
        # The leader's task: a pass at once, then one every every_s.
        task = asyncio.create_task(AuditRetention(
            ControlSettings(audit_retention_days=30), log, metrics, every_s=0.2).run())
        try:
            await asyncio.sleep(0.1)
            log.write(_entry("supervisor", "later"))
            _aged(meta, 45, {"later"})
            for _ in range(50):  # counted once the pass is over, after the delete
                await asyncio.sleep(0.1)
                if metrics.registry.get_sample_value(
                        "stratum_control_audit_pruned_total") == 3:
                    break
            return [e.action for e in log.entries()]
        finally:
            task.cancel()

    assert asyncio.run(leading()) == ["recent"]
    assert metrics.registry.get_sample_value("stratum_control_audit_pruned_total") == 3


def test_audit_retention_is_a_control_setting(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert ControlSettings().audit_retention_days == 90
    monkeypatch.setenv("STRATUM_CONTROL__AUDIT_RETENTION_DAYS", "0")
    assert load_settings(home=tmp_path / "home").control.audit_retention_days == 0
    with pytest.raises(ValueError, match="audit_retention_days"):
        ControlSettings(audit_retention_days=-1)


def test_an_existing_0002_database_upgrades(db_url: str) -> None:
    engine = make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location",
                        str(Path(stratum.store.db.__file__).with_name("migrations")))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO events (ts, kind, subject, payload) VALUES "
                          "('2026-01-01 00:00:00', 'old.event', 'tiny', '{}')"))
    assert "audit_log" not in inspect(engine).get_table_names()
    engine.dispose()
    store = MetadataStore.open(db_url)  # migrates on open
    try:
        assert current_revision(store.engine) == head_revision()
        assert "audit_log" in inspect(store.engine).get_table_names()
        assert [e.kind for e in store.events()] == ["old.event"]
        AuditLog(store).write(_entry("supervisor", "drain", component="replica"))
        assert [e.action for e in AuditLog(store).entries()] == ["drain"]
    finally:
        store.close()


def test_the_key_checker_names_a_caller_never_by_its_key(store: Store) -> None:
    key, key_id = generate_key()
    store.meta.add_api_key(key_id, "carol", hash_key(key), ["predict"])
    kc = KeyChecker(store.meta, ttl=60.0)
    with pytest.raises(AuthError):
        asyncio.run(kc.authorize(key, "admin"))
    assert kc.actor(key) == f"key:{key_id} carol"
    assert kc.actor(None) == "anonymous"
    assert kc.actor("sk_0123_wrong") == "key:0123 (invalid)"
    assert kc.actor("not-a-key") == "anonymous (invalid key)"


async def _call(gw: Gateway, method: str, path: str, **kw: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=gw, client=("127.0.0.1", 40123))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.request(method, path, **kw)  # type: ignore[arg-type]


def test_gateway_admin_writes_are_audited_refusals_too(settings: Settings, store: Store) -> None:
    admin, admin_id = generate_key()
    store.meta.add_api_key(admin_id, "ops", hash_key(admin), ["admin"])
    predict, predict_id = generate_key()
    store.meta.add_api_key(predict_id, "alice", hash_key(predict), ["predict"])
    gw = Gateway(settings, RoutesSpec(), meta=store.meta, name="tiny", admin_token="t0k")
    secret = "s3cret-" * 6
    body = RoutesSpec(deployments={"tiny": PoolSpec(groups=[GroupSpec(
        version=2, replicas=["http://127.0.0.1:9002", "http://127.0.0.1:9003"])])},
        secrets={"http://127.0.0.1:9002": secret}).model_dump_json()
    calls = [({"x-stratum-admin-token": "t0k"}, 200), ({"x-stratum-admin-token": "nope"}, 401),
             ({}, 401), ({"x-api-key": predict}, 403), ({"x-api-key": admin}, 200)]
    for headers, want in calls:
        r = asyncio.run(_call(gw, "PUT", "/admin/routes", content=body, headers=headers))
        assert r.status_code == want, r.text
    assert asyncio.run(_call(gw, "GET", "/admin/routes", headers={"x-api-key": admin})
                       ).status_code == 200  # reads are not recorded
    got = AuditLog(store.meta).entries(component="gateway")
    assert [(e.actor, e.outcome) for e in reversed(got)] == [
        ("supervisor", 200), ("anonymous (wrong supervisor token)", 401), ("anonymous", 401),
        (f"key:{predict_id} alice", 403), (f"key:{admin_id} ops", 200)]
    assert {(e.action, e.target, e.source) for e in got} == {
        ("routes.put", "tiny", "127.0.0.1:40123")}
    first = got[-1]
    assert first.detail["replicas"] == 2 and first.detail["deployments"] == ["tiny"]
    assert first.detail["etag"]["before"] != first.detail["etag"]["after"]
    assert got[-2].detail == {}  # refused: nothing changed
    stored = orjson.dumps([e.to_dict() for e in got], default=str).decode()
    assert secret not in stored and "t0k" not in stored and admin not in stored


def test_a_gateway_without_a_store_logs_its_audit_records(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    gw = Gateway(settings, RoutesSpec(), admin_token="t0k")
    with caplog.at_level(logging.INFO, logger="stratum.audit"):
        for token in ("t0k", "nope"):
            asyncio.run(_call(gw, "PUT", "/admin/routes", content=b"{}",
                              headers={"x-stratum-admin-token": token}))
    ok, refused = (r for r in caplog.records if r.name == "stratum.audit")
    assert ok.levelno == logging.INFO and refused.levelno == logging.WARNING
    assert ok.audit == {"actor": "supervisor", "source": "127.0.0.1:40123",  # type: ignore[attr-defined]
                        "component": "gateway", "action": "routes.put", "target": "",
                        "outcome": 200, "detail": ok.audit["detail"]}  # type: ignore[attr-defined]
    assert refused.audit["outcome"] == 401 and "t0k" not in refused.getMessage()  # type: ignore[attr-defined]


def test_parse_since() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("1.5h", now) == now - timedelta(minutes=90)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2026-03-01T10:00:00+02:00", now).utcoffset() == timedelta(hours=2)
    for bad in ("yesterday", "5y", "-3h", ""):
        with pytest.raises(ConfigError, match="--since"):
            parse_since(bad, now)


def test_stratum_audit_lists_filters_and_records_key_changes(settings: Settings,
                                                             store: Store) -> None:
    log = AuditLog(store.meta)
    log.write(_entry("anonymous", "scale", 401))
    log.write(_entry("supervisor", "drain", component="replica", drained=True))
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(app, ["--home", str(settings.home), *args])
        assert result.exit_code == 0, (result.output, result.exception)
        return result.stdout

    created = orjson.loads(cli("keys", "create", "ci", "--scope", "admin", "--json"))
    lines = [orjson.loads(line) for line in cli("audit", "--json").splitlines()]
    assert [r["action"] for r in lines] == ["keys.create", "drain", "scale"]
    assert lines[0]["component"] == "cli" and lines[0]["actor"].startswith("os:")
    assert lines[0]["detail"] == {"key_id": created["key_id"], "scopes": ["admin"]}
    assert created["key"] not in cli("audit", "--json")
    only = cli("audit", "--json", "--component", "replica", "--since", "1h", "--limit", "5")
    assert [orjson.loads(x)["action"] for x in only.splitlines()] == ["drain"]
    assert cli("audit", "--json", "--actor", "nobody-at-all") == ""
    table = cli("audit", "--action", "scale")  # folded to the terminal's width
    assert "401" in table and "scale" in table and "drain" not in table
    assert "no audit records match" in cli("audit", "--action", "nothing")


def test_bad_audit_filters_exit_1_with_a_message(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = subprocess.run([STRATUM, "--home", str(home), "audit", "--since", "yesterday"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "--since 'yesterday' is neither a duration nor an ISO time" in out.stderr
    for args, message in ((["--component", "db"], "--component 'db' is not one of control, "
                                                   "gateway, replica, cli"),
                          (["--limit", "0"], "--limit 0 must be between 1 and 100000")):
        result = CliRunner().invoke(app, ["--home", str(home), "audit", *args])
        assert isinstance(result.exception, ConfigError), result.output
        assert message in str(result.exception)
    assert not home.exists()  # refused before the store was opened
