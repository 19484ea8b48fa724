"""The metadata store: the same tests against SQLite and the machine's PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from stratum.errors import ConflictError, InvalidNameError, NotFoundError
from stratum.store import MetadataStore
from stratum.store.db import current_revision, head_revision, migrate


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


def _version(meta: MetadataStore, name: str, version: str, rows: int = 10):  # type: ignore[no-untyped-def]
    return meta.add_dataset_version(
        name, version, source="builtin:iris", num_rows=rows, schema={"target": "t"},
        stats={"rows": rows}, cleaning={"duplicates": 1}, shard_map={"shards": 2},
        extra={"pipeline": {"steps": []}})


def test_dataset_versions(meta: MetadataStore) -> None:
    dv, created = _version(meta, "iris", "aaaa1111")
    assert created and dv.id and dv.num_rows == 10
    again, created = _version(meta, "iris", "aaaa1111", rows=99)
    assert not created and again.id == dv.id and again.num_rows == 10
    _version(meta, "iris", "aaaa2222", rows=20)
    _version(meta, "digits", "bbbb")
    assert meta.dataset_version("iris").version == "aaaa2222"
    assert meta.dataset_version("iris", "latest").num_rows == 20
    assert meta.dataset_version("iris", "aaaa1").cleaning == {"duplicates": 1}
    with pytest.raises(NotFoundError):
        meta.dataset_version("iris", "aaaa")  # ambiguous prefix
    with pytest.raises(NotFoundError, match="dataset 'nope' does not exist"):
        meta.dataset_version("nope")
    listing = {ds.name: (latest.version, n) for ds, latest, n in meta.datasets()}
    assert listing == {"digits": ("bbbb", 1), "iris": ("aaaa2222", 2)}
    assert [v.version for v in meta.dataset_versions("iris")] == ["aaaa2222", "aaaa1111"]
    assert len(meta.events(subject="iris", kind="dataset.*")) == 2
    with pytest.raises(InvalidNameError):
        _version(meta, "../evil", "x")


def test_runs_and_metrics(meta: MetadataStore) -> None:
    dv, _ = _version(meta, "iris", "v1")
    run = meta.start_run("iris-mlp", strategy="ddp", config={"lr": 0.1}, dataset_version_id=dv.id)
    meta.log_metrics(run.id, {"loss": 1.0, "acc": 0.5}, step=1, epoch=0)
    meta.log_metrics(run.id, {"loss": 0.5}, step=2, epoch=1)
    assert [(m.step, m.value) for m in meta.metrics(run.id, "loss")] == [(1, 1.0), (2, 0.5)]
    assert len(meta.metrics(run.id)) == 3
    meta.finish_run(run.id, "failed", error="worker died", summary={"steps": 2})
    done = meta.run(run.id)
    assert (done.status, done.error, done.summary) == ("failed", "worker died", {"steps": 2})
    resumed = meta.start_run("iris-mlp", strategy="ddp", config={}, run_id=run.id)
    assert resumed.id == run.id and meta.run(run.id).status == "running"
    assert [r.id for r in meta.runs("iris-mlp")] == [run.id]
    with pytest.raises(NotFoundError):
        meta.finish_run("missing", "done")


def test_metrics_that_could_not_be_computed_are_left_out(meta: MetadataStore) -> None:
    run = meta.start_run("m", strategy="online", config={})
    meta.log_metrics(run.id, {"recent_accuracy": float("nan"), "holdout_accuracy": 0.9,
                              "gap": float("inf")}, step=0)
    assert [(m.key, m.value) for m in meta.metrics(run.id)] == [("holdout_accuracy", 0.9)]


def test_model_versions_and_aliases(meta: MetadataStore) -> None:
    assert meta.next_model_version("m") == 1
    v1 = meta.add_model_version("m", version=1, artifact_path="models/m/1", spec={"a": 1},
                                aliases=("candidate",))
    meta.add_model_version("m", version=2, artifact_path="models/m/2", spec={"a": 2},
                           parent_id=v1.id)
    assert meta.next_model_version("m") == 3
    with pytest.raises(ConflictError):
        meta.add_model_version("m", version=2, artifact_path="x", spec={})
    assert meta.model_version("m").version == 2
    assert meta.model_version("m", "v1").spec == {"a": 1}
    assert meta.model_version("m", "candidate").version == 1
    meta.set_alias("m", "production", 1)
    meta.set_alias("m", "candidate", 2, reason="retrained")
    assert meta.aliases("m") == {"candidate": 2, "production": 1}
    moves = meta.events(subject="m", kind="alias.moved")
    assert moves[0].payload == {"alias": "candidate", "version": 2, "previous": 1,
                                "reason": "retrained"}
    assert len(moves) == 3
    with pytest.raises(NotFoundError):
        meta.model_version("m", "staging")
    with pytest.raises(NotFoundError):
        meta.set_alias("m", "production", 9)
    assert meta.model_version_by_id(v1.id).name == "m"


def test_deployments(meta: MetadataStore) -> None:
    dep = meta.put_deployment("web", {"model": "m@production", "replicas": 2})
    assert dep.generation == 1 and dep.status == "pending"
    assert meta.put_deployment("web", {"model": "m@2", "replicas": 3}).generation == 2
    meta.observe_deployment("web", "ready", {"replicas": [{"pid": 1, "healthy": True}]})
    got = meta.deployment("web")
    assert (got.status, got.spec["replicas"], got.observed["replicas"][0]["pid"]) == (
        "ready", 3, 1)
    assert [d.name for d in meta.deployments()] == ["web"]
    meta.delete_deployment("web")
    with pytest.raises(NotFoundError):
        meta.deployment("web")
    assert meta.events(subject="web", kind="deployment.deleted")


def test_api_keys(meta: MetadataStore) -> None:
    meta.add_api_key("k1", "ci", "hash-1", ["predict"])
    meta.add_api_key("k2", "admin", "hash-2", ["admin", "predict"])
    assert meta.api_key("k2").scopes == ["admin", "predict"]  # type: ignore[union-attr]
    assert meta.api_key("nope") is None
    meta.revoke_api_key("k1")
    assert meta.api_key("k1").revoked_at is not None  # type: ignore[union-attr]
    assert [k.key_id for k in meta.api_keys()] == ["k1", "k2"]
    with pytest.raises(NotFoundError):
        meta.revoke_api_key("nope")


def test_migrations_are_idempotent(db_url: str) -> None:
    first = MetadataStore.open(db_url)
    _version(first, "iris", "v1")
    assert current_revision(first.engine) == head_revision()
    migrate(first.engine)  # again: a no-op
    second = MetadataStore.open(db_url)  # a second starter on the same database
    assert second.dataset_version("iris").version == "v1"
    assert current_revision(second.engine) == head_revision()
    first.close()
    second.close()


def test_the_cheap_head_check_agrees_with_alembic(db_url: str) -> None:
    from stratum.store.db import _at_head, make_engine, script_head

    assert script_head() == head_revision()
    engine = make_engine(db_url)
    try:
        assert not _at_head(engine)  # nothing stamped yet: Alembic's path migrates
        migrate(engine)
        assert _at_head(engine)
    finally:
        engine.dispose()


def test_a_database_that_does_not_answer_is_a_503_to_retry(tmp_path: Path) -> None:
    """A cut connection (PostgreSQL restarting) or a lock held past the busy timeout is
    ``StoreUnavailableError`` from every metadata session: loops wait it out, the HTTP
    APIs answer 503."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from stratum.errors import StoreUnavailableError
    from stratum.store.db import answering

    with pytest.raises(StoreUnavailableError) as err, answering("the metadata store"):
        raise OperationalError("SELECT 1", {}, ConnectionResetError("cut"))
    assert err.value.http_status == 503 and "ConnectionResetError" in str(err.value)
    with pytest.raises(StoreUnavailableError), answering("x"):
        raise OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))
    meta = MetadataStore.open(f"sqlite:///{tmp_path / 'm.db'}")
    try:  # a wrong statement is a bug to show, not a database to wait for
        with pytest.raises(OperationalError), meta.session() as s:
            s.execute(text("SELECT * FROM no_such_table"))
    finally:
        meta.close()
