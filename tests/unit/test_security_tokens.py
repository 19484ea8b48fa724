"""The admin token made on first start (once, even when processes race), the private home,
and the replica secret's shape."""

from __future__ import annotations

import multiprocessing
import stat
import threading
from pathlib import Path

import pytest

from stratum.config import Settings, load_settings
from stratum.errors import ConfigError
from stratum.security import ensure_admin_token, private_home
from stratum.security.keys import key_id_of, verify_key
from stratum.security.tokens import check_replica_secret, replica_secret
from stratum.store import MetadataStore, Store


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _admin_rows(store: Store) -> list[str]:
    return [k.key_id for k in store.meta.api_keys() if k.name == "admin-token"]


def test_the_admin_token_is_made_once_in_a_0600_file_and_stored_hashed(
        settings: Settings, store: Store) -> None:
    token = ensure_admin_token(settings.home, store.meta)
    path = settings.home / "admin.token"
    assert path.read_text().strip() == token and _mode(path) == 0o600
    row = store.meta.api_key(key_id_of(token) or "")
    assert row is not None and row.scopes == ["admin"] and row.revoked_at is None
    assert token not in row.key_hash and verify_key(token, row.key_hash)
    assert ensure_admin_token(settings.home, store.meta) == token
    assert _admin_rows(store) == [row.key_id]


def test_threads_racing_get_one_token(settings: Settings, store: Store) -> None:
    barrier, got = threading.Barrier(8), []

    def one() -> None:
        barrier.wait()
        got.append(ensure_admin_token(settings.home, store.meta))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 8 and len(set(got)) == 1
    assert len(_admin_rows(store)) == 1


def _child(home: str, url: str, start: multiprocessing.synchronize.Event,
           out: multiprocessing.Queue[str]) -> None:
    meta = MetadataStore.open(url)  # the child's own engine and connections
    start.wait(30)
    out.put(ensure_admin_token(Path(home), meta))
    meta.close()


def _race(home: Path, url: str, n: int) -> set[str]:
    """The tokens ``n`` processes got, started together on one home."""
    ctx = multiprocessing.get_context("fork")  # the modules are imported already
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(str(home), url, start, out)) for _ in range(n)]
    for p in procs:
        p.start()
    start.set()
    tokens = {out.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return tokens


def test_processes_racing_get_one_token(settings: Settings, store: Store) -> None:
    assert settings.metadata_url
    tokens = _race(settings.home, settings.metadata_url, 4)
    assert len(tokens) == 1
    assert len(_admin_rows(store)) == 1
    assert (settings.home / "admin.token").read_text().strip() == tokens.pop()


def test_processes_on_postgresql_get_one_token(pg_url: str, tmp_path: Path) -> None:
    """The lock is the home's file; the store may be PostgreSQL all the same."""
    meta = MetadataStore.open(pg_url)
    try:
        assert len(_race(tmp_path, pg_url, 3)) == 1
        assert [k.name for k in meta.api_keys()] == ["admin-token"]
    finally:
        meta.close()


def test_a_revoked_token_is_replaced(settings: Settings, store: Store) -> None:
    old = ensure_admin_token(settings.home, store.meta)
    store.meta.revoke_api_key(key_id_of(old) or "")
    new = ensure_admin_token(settings.home, store.meta)
    assert new != old and (settings.home / "admin.token").read_text().strip() == new
    assert _mode(settings.home / "admin.token") == 0o600


def test_a_token_file_is_registered_in_a_database_that_lacks_it(
        settings: Settings, store: Store, tmp_path: Path) -> None:
    token = ensure_admin_token(settings.home, store.meta)
    other = Store.open(load_settings(home=tmp_path / "other"))
    try:
        (tmp_path / "other" / "admin.token").write_text(token)
        assert ensure_admin_token(tmp_path / "other", other.meta) == token
        row = other.meta.api_key(key_id_of(token) or "")
        assert row is not None and verify_key(token, row.key_hash)
    finally:
        other.close()


def test_a_file_that_holds_no_key_is_a_clear_error(settings: Settings, store: Store) -> None:
    (settings.home / "admin.token").write_text("hunter2")
    with pytest.raises(ConfigError, match="does not hold a Stratum key"):
        ensure_admin_token(settings.home, store.meta)


def test_the_home_is_0700_and_its_database_0600(tmp_path: Path) -> None:
    loose = tmp_path / "old-home"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    assert private_home(loose) == loose.resolve() and _mode(loose) == 0o700
    settings = load_settings(home=tmp_path / "new" / "home")
    store = Store.open(settings)
    try:
        ensure_admin_token(settings.home, store.meta)
        (settings.home / "logs").mkdir()
        (settings.home / "logs" / "x.log").write_text("a log")
        assert _mode(settings.home) == 0o700
        for name in ("stratum.db", "admin.token", "logs/x.log"):
            assert _mode(settings.home / name) == 0o600, name
    finally:
        store.close()


def test_replica_secrets_are_fresh_and_header_safe() -> None:
    a, b = replica_secret(), replica_secret()
    assert a != b and check_replica_secret(a) == a and len(a) >= 43
    for bad in ("short", "x" * 20 + "\r\nhost: evil", "spaces are not allowed here"):
        with pytest.raises(ConfigError):
            check_replica_secret(bad)
