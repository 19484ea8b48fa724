"""The request log on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from stratum.config import load_settings
from stratum.errors import DataError
from stratum.security.masking import mask
from stratum.store import MetadataStore
from stratum.store.models import utcnow
from stratum.store.requests import LoggedRequest, RequestLog


@pytest.fixture(params=["sqlite", "postgresql"])
def meta(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'meta.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    store = MetadataStore.open(url)  # runs migrations 0001 and 0002
    yield store
    store.close()


def test_log_and_get_roundtrip(meta: MetadataStore) -> None:
    log = RequestLog(meta)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    assert log.log("r1", "iris", 3, {"instances": x}, [2])
    got = log.get("r1")
    assert got is not None
    assert (got.model, got.version, got.prediction) == ("iris", 3, [2])
    assert got.inputs == {"instances": [[0.0, 1.0, 2.0, 3.0]]}
    assert got.ts.tzinfo is not None and abs((utcnow() - got.ts).total_seconds()) < 60
    assert log.get("nope") is None
    assert not log.log("r1", "iris", 3, {"instances": [[9]]}, [0])  # logged once
    assert log.get("r1").inputs == {"instances": [[0.0, 1.0, 2.0, 3.0]]}  # type: ignore[union-attr]


def test_pii_columns_are_masked_before_storing(meta: MetadataStore) -> None:
    log = RequestLog(meta, pii_columns=["email", "ssn"], mask_key=b"k")
    log.log("r1", "churn", 1, {"instances": [{"email": "a@b.c", "ssn": "123", "age": 40},
                                             {"email": "d@e.f", "ssn": None, "age": 22}]}, [1, 0])
    log.log("r2", "churn", 1, [["a@b.c", 40]], [1], feature_names=["email", "age"])
    rows = log.get("r1").inputs["instances"]  # type: ignore[union-attr]
    assert [r["age"] for r in rows] == [40, 22]
    assert rows[0]["email"].startswith("masked:") and "a@b.c" not in str(rows)
    assert rows[0]["email"] != rows[1]["email"] and rows[1]["ssn"] is None
    positional = log.get("r2").inputs  # type: ignore[union-attr]
    assert positional == [[rows[0]["email"], 40]]  # same value, same mask: joins still work


def test_masking_shapes() -> None:
    oip = [{"name": "ssn", "shape": [2], "datatype": "BYTES", "data": ["1", "2"]},
           {"name": "age", "shape": [2], "datatype": "INT64", "data": [3, 4]}]
    out = mask(oip, ["ssn"])
    assert out[0]["data"] == ["***", "***"] and out[1] == oip[1]
    assert mask({"ssn": [1, 2], "x": [3]}, ["ssn"]) == {"ssn": ["***", "***"], "x": [3]}
    assert mask({"a": 1}, []) == {"a": 1}


def test_retention_and_purge(meta: MetadataStore) -> None:
    log = RequestLog(meta, retention_s=60)
    old = utcnow() - timedelta(seconds=120)
    assert log.log("old", "m", 1, [1], [0], ts=old)
    assert log.log("new", "m", 1, [2], [1])
    assert log.get("old") is None  # expired: invisible before any purge
    assert set(log.get_many(["old", "new", "missing"])) == {"new"}
    assert log.purge_expired() == 1
    assert log.purge_expired() == 0
    assert log.get("new") is not None


def test_sampling_is_deterministic_and_close_to_rate(meta: MetadataStore) -> None:
    log = RequestLog(meta, sample_rate=0.3)
    ids = [f"req-{i}" for i in range(2000)]
    chosen = [i for i in ids if log.sampled(i)]
    assert 0.25 < len(chosen) / len(ids) < 0.35
    assert chosen == [i for i in ids if RequestLog(meta, sample_rate=0.3).sampled(i)]
    written = log.log_many({"request_id": i, "model": "m", "version": 1, "inputs": [0],
                            "prediction": 0} for i in ids)
    assert written == len(chosen)
    assert set(log.get_many(ids)) == set(chosen)
    assert RequestLog(meta, sample_rate=0.0).log("z", "m", 1, [0], 0) is False


def test_log_many_batches_and_skips_repeats(meta: MetadataStore) -> None:
    log = RequestLog(meta)
    entries = [LoggedRequest(f"b{i}", "m", 2, {"x": [i]}, i, utcnow()) for i in range(1200)]
    assert log.log_many(entries) == 1200
    assert log.log_many(entries[:10]) == 0
    got = log.get_many([e.request_id for e in entries])
    assert len(got) == 1200 and got["b777"].inputs == {"x": [777]}


def test_bad_entries_are_clear_errors(meta: MetadataStore) -> None:
    log = RequestLog(meta)
    with pytest.raises(DataError, match="request id"):
        log.log("", "m", 1, [0], 0)
    with pytest.raises(DataError, match="'inputs'"):
        log.log_many([{"request_id": "a", "model": "m"}])
    with pytest.raises(DataError, match="sample rate"):
        RequestLog(meta, sample_rate=2)


def test_from_settings(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path, online={"log_sample_rate": 0.5, "log_pii_columns": ["a"]})
    meta = MetadataStore.open(s.metadata_url or "")
    log = RequestLog.from_settings(s, meta)
    assert log.sample_rate == 0.5 and log.pii_columns == {"a"}
    meta.close()
