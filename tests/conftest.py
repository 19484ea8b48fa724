"""Shared fixtures. Our components run as real processes; services are the real ones."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratum.config import Settings, load_settings
from stratum.store import Store
from tests.services import (
    IN_CI,
    REDIS_URL,
    drop_pg_database,
    free_port,
    fresh_pg_database,
    missing_service,
    started,
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In CI (CI=true) a skipped test is a failure, whatever skipped it: CI must run all."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} skipped in CI: {report.longrepr}"


# Fixtures and parameter values that reach a service on the machine (PostgreSQL, Redis, the
# moto S3 server): a test using one is an integration test wherever it lives, so the README's
# fast command (-m "not integration and not slow") runs with no services at all.
SERVICE_FIXTURES = frozenset({"pg_url", "redis_url", "s3_server", "s3_options"})
SERVICE_PARAMS = frozenset({"postgresql", "redis", "s3"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(item, "callspec", None)
        values = {v for v in params.params.values() if isinstance(v, str)} if params else set()
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())) or SERVICE_PARAMS & values:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-default settings rooted in a fresh temp home."""
    return load_settings(home=tmp_path / "home")


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store.open(settings)
    yield s
    s.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the machine's server, dropped afterwards."""
    url, name = fresh_pg_database()
    yield url
    drop_pg_database(name)


@pytest.fixture
def redis_url() -> str:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        missing_service("Redis at " + REDIS_URL, exc)
    return REDIS_URL


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server as a real process on 127.0.0.1; yields its endpoint URL."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("moto_server is not installed; `make test` installs it with the dev extra")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with started([exe, "-H", "127.0.0.1", "-p", str(port)], ready_url=url + "/moto-api/",
                 log=log):
        yield url


@pytest.fixture
def s3_options(s3_server: str) -> dict[str, object]:
    return {
        "key": "test", "secret": "test",
        "client_kwargs": {"endpoint_url": s3_server, "region_name": "us-east-1"},
    }
