"""ProcessedIds: apply-once claims in the metadata DB (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stratum.store import MetadataStore, ProcessedIds
from stratum.store.models import Event


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_claim_returns_only_new_keys(backend: str, tmp_path: Path,
                                     request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite"
           else request.getfixturevalue("pg_url"))
    meta = MetadataStore.open(url)
    a, b = ProcessedIds(meta.engine, "learner:a"), ProcessedIds(meta.engine, "learner:b")
    assert a.claim(["1", "2", "2", "3"]) == ["1", "2", "3"]
    assert a.claim(["3", "4"]) == ["4"]
    assert b.claim(["1"]) == ["1"]  # consumers are independent
    assert a.seen(["1", "9"]) == {"1"}
    # Claim inside the caller's transaction: a failed effect rolls the claim back.
    with pytest.raises(RuntimeError), meta.session() as s:
        assert a.claim(["5"], session=s) == ["5"]
        s.add(Event(kind="x", subject="y", payload={}))
        raise RuntimeError("effect failed")
    assert a.claim(["5"]) == ["5"]
    assert a.purge(older_than_s=3600) == 0 and a.purge(older_than_s=-1) == 5
    meta.close()
