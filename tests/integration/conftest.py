"""Trained baselines shared by several test modules, made once per session: training them
is the slow part, and each one is only read afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stratum.config import Settings
from stratum.store import Store
from stratum.store import models as m
from tests.integration.train_helpers import example, home_with


@pytest.fixture(scope="session")
def mnist_home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return home_with(tmp_path_factory.mktemp("mnist"), "mnist")  # ingest("builtin:mnist")


@pytest.fixture(scope="session")
def mnist_store(mnist_home: Settings) -> Iterator[Store]:
    s = Store.open(mnist_home)
    yield s
    s.close()


@pytest.fixture(scope="session")
def mnist_ddp(mnist_home: Settings, mnist_store: Store) -> m.ModelVersion:
    """examples/mnist.yaml with ddp over 2 workers: the baseline every strategy meets."""
    from stratum.train import fit, parse_config

    return fit(parse_config(example("mnist", name="mnist-ddp", workers=2)), mnist_home,
               store=mnist_store)
