"""The request log on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from stratum.config import load_settings
from stratum.errors import ConfigError, DataError
from stratum.security.masking import mask, mask_value
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


# -- what the replica captures, in every input form, stored masked --------------------------
FEATURES = ["age", "ssn", "income"]
ROWS = [[41, 1234567, 5.5], [37, 7654321, 1.25]]  # exact in FP32 too


def _oip(binary: bool, per_feature: bool) -> list[Any]:
    """The inputs a replica captures for one OIP request (``decode_request`` then
    ``instances_of``, exactly as ``routes.infer`` does)."""
    from stratum.serve.oip import decode_request, instances_of

    arr = np.array(ROWS, np.float32)
    tensors = ([(f, arr[:, [j]]) for j, f in enumerate(FEATURES)] if per_feature
               else [("input", arr)])
    items, blobs = [], b""
    for name, t in tensors:
        item: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(t.shape)}
        if binary:
            item["parameters"] = {"binary_data_size": t.nbytes}
            blobs += np.ascontiguousarray(t).tobytes()
        else:
            item["data"] = t.tolist()
        items.append(item)
    head = orjson.dumps({"inputs": items})
    req = decode_request(head + blobs, len(head) if binary else None)
    return instances_of(req.inputs)


FORMS: dict[str, Callable[[], Any]] = {
    "v1 rows": lambda: [list(r) for r in ROWS],
    "v1 objects": lambda: [dict(zip(FEATURES, r, strict=True)) for r in ROWS],
    "oip json, one tensor": lambda: _oip(False, False),
    "oip json, tensor per feature": lambda: _oip(False, True),
    "oip binary, one tensor": lambda: _oip(True, False),
    "oip binary, tensor per feature": lambda: _oip(True, True),
}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("key", [None, b"0123456789abcdef"])
def test_every_input_form_is_stored_with_its_pii_column_masked(
    tmp_path: Path, form: str, key: bytes | None,
) -> None:
    from stratum.serve.capture import InputCapture

    meta = MetadataStore.open(f"sqlite:///{tmp_path / 'meta.db'}")
    log = RequestLog(meta, pii_columns=["ssn"], mask_key=key)
    capture = InputCapture(log, "m", feature_names=FEATURES)
    capture.add("r1", 1, FORMS[form](), {"classes": [0, 1]})
    assert capture.flush() == 1
    stored = log.get("r1")
    assert stored is not None
    rows = [list(r.values()) if isinstance(r, dict) else r for r in stored.instances]
    assert [[r[0], r[2]] for r in rows] == [[41, 5.5], [37, 1.25]]  # the rest as served
    ssn = [r[1] for r in rows]
    text = orjson.dumps(stored.inputs).decode()
    assert "1234567" not in text and "7654321" not in text, text
    if key is None:
        assert ssn == ["***", "***"]
    else:  # keyed: the same value masks the same way in every form, so joins still work
        want = [mask_value(v, key) for v in (1234567, 7654321)]
        assert ssn == want and want[0].startswith("masked:") and want[0] != want[1]
    meta.close()


def test_the_keyed_mode_is_reachable_from_settings(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path, online={"log_pii_columns": ["ssn"],
                                             "log_pii_key_file": "pii.key"})
    meta = MetadataStore.open(s.metadata_url or "")
    with pytest.raises(ConfigError, match="cannot be read"):
        RequestLog.from_settings(s, meta)
    (tmp_path / "pii.key").write_text("short\n")
    with pytest.raises(ConfigError, match="16 or more"):
        RequestLog.from_settings(s, meta)
    (tmp_path / "pii.key").write_text("k" * 32 + "\n")
    (tmp_path / "pii.key").chmod(0o600)
    log = RequestLog.from_settings(s, meta)
    assert log.mask_key == b"k" * 32
    log.log("r", "m", 1, [{"ssn": 7}], None)
    assert log.get("r").inputs == [{"ssn": mask_value(7, b"k" * 32)}]  # type: ignore[union-attr]
    meta.close()


def test_the_log_stays_within_its_row_bound(meta: MetadataStore) -> None:
    log = RequestLog(meta, max_rows=50)
    t0 = utcnow() - timedelta(seconds=600)
    sizes = []
    for b in range(40):  # 280 rows, oldest first, in batches of 7
        log.log_many(LoggedRequest(f"q{b}-{i}", "m", 1, [[b, i]], None,
                                   t0 + timedelta(seconds=b * 7 + i)) for i in range(7))
        sizes.append(_count(meta))
    assert max(sizes) <= 50 + log.prune_every + 7  # pruned every tenth of the bound
    log.prune()
    assert _count(meta) == 50
    kept = log.get_many([f"q{b}-{i}" for b in range(40) for i in range(7)])
    assert set(kept) == {f"q{b}-{i}" for b in range(40) for i in range(7)
                         if b * 7 + i >= 280 - 50}  # the newest stay
    assert RequestLog(meta, max_rows=None).prune_every == 0  # explicit: no bound but age


def _count(meta: MetadataStore) -> int:
    from sqlalchemy import func, select

    from stratum.store.models import RequestRecord

    with meta.session() as s:
        return int(s.scalar(select(func.count()).select_from(RequestRecord)) or 0)


def test_a_database_that_does_not_answer_is_a_503_not_a_traceback() -> None:
    """The feedback route looks ids up in the log; during a PostgreSQL restart that must
    be a retryable 503 naming the cause."""
    from sqlalchemy import create_engine

    from stratum.errors import StoreUnavailableError
    from stratum.store.requests import RequestLog

    dead = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none",
                         connect_args={"connect_timeout": 2})
    log = RequestLog(dead)
    with pytest.raises(StoreUnavailableError, match="does not answer") as caught:
        log.get_many(["r1"])
    assert caught.value.http_status == 503 and caught.value.hint
