"""Ingest end to end in-process against a real SQLite store and artifact folder."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stratum.data import Feature, Schema, ingest, open_dataset
from stratum.data.dataset import ROW_ID
from stratum.errors import DataError, IntegrityError
from stratum.store import Store


def _csv(path: Path, rows: int, bad_at: int | None = None, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["id,x1,x2,color,label"]
    for i in range(rows):
        x1 = "abc" if i == bad_at else f"{rng.normal():.4f}"
        lines.append(f"{i},{x1},{rng.uniform(0, 5):.3f},{'red' if i % 3 else 'blue'},"
                     f"{'yes' if i % 4 else 'no'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _artifact_root(store: Store) -> Path:
    return Path(store.artifacts.url)


def test_csv_ingest_versions_splits_and_replicas(store: Store, tmp_path: Path) -> None:
    src = _csv(tmp_path / "d.csv", 500)
    res = ingest(str(src), "d", store, shards=4, replicas=2)
    dv = res.version
    assert res.created and dv.num_rows == 500 and res.report.rows_kept == 500
    assert dv.schema["task"] == "classification" and dv.schema["classes"] == ["no", "yes"]
    splits = dv.stats["splits"]  # stratified: exact per 20 rows of a class, so about 80/10/10
    assert splits["train"] == 400 and abs(splits["val"] - 50) <= 2 and sum(splits.values()) == 500
    files = dv.shard_map["files"]
    assert len(files) == 4 and sum(f["rows"] for f in files) == 500
    root = _artifact_root(store)
    for f in files:  # replicas are byte-identical and match the shard map's checksum
        blobs = [(root / p).read_bytes() for p in f["paths"]]
        assert len(blobs) == 2 and blobs[0] == blobs[1]
        import hashlib

        assert hashlib.sha256(blobs[0]).hexdigest() == f["sha256"]
    again = ingest(str(src), "d", store, shards=4, replicas=2)
    assert not again.created and again.version.version == dv.version
    assert len(store.meta.dataset_versions("d")) == 1
    other = ingest(str(src), "d", store, shards=3, replicas=1)
    assert other.created and other.version.version != dv.version

    ds = open_dataset(store, f"d@{dv.version[:8]}")
    assert ds.feature_names == ["id", "x1", "x2", "color"] and ds.input_shape == [5]
    x, y = ds.load("train")
    assert x.shape == (400, 5) and x.dtype == np.float32 and y.dtype == np.int64
    assert set(np.unique(y)) == {0, 1}
    np.testing.assert_allclose(x[:, :3].mean(axis=0), 0, atol=1e-6)  # fitted on train
    xs, _ = ds.load("val")
    assert xs.shape == (splits["val"], 5)
    # Serving applies the very same transform to raw columns.
    table = ds.load_table("test")
    raw = {c: table[c].to_pylist() for c in ds.feature_names}
    np.testing.assert_array_equal(ds.pipeline.transform(raw), ds.load("test")[0])


def test_csv_read_in_pieces_loses_and_repeats_no_row(store: Store, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from stratum.data import csv_reader as readers

    src = _csv(tmp_path / "p.csv", 3_000)
    src.write_bytes(src.read_bytes().rstrip(b"\n"))  # no line end after the last row
    whole = ingest(str(src), "whole", store, shards=3)
    monkeypatch.setattr(readers, "_MIN_PIECE_BYTES", 4_096)  # ~30 pieces, cut mid-file
    tiny = ingest(str(src), "tiny", store, shards=3, batch_rows=7)
    assert whole.version.num_rows == tiny.version.num_rows == 3_000
    # The version is the content: the same rows in the same order, however they were read.
    assert whole.version.version == tiny.version.version
    ids = open_dataset(store, "tiny").load_table(None)["id"].to_pylist()
    assert sorted(ids) == list(range(3_000))
    assert list(store.artifacts.staging_dir().iterdir()) == []  # nothing staged is left


def test_workers_get_disjoint_shards_covering_everything(store: Store) -> None:
    ingest("builtin:iris", "iris", store, shards=5, replicas=1)
    ds = open_dataset(store, "iris")
    assert ds.task == "classification" and ds.classes == ["setosa", "versicolor", "virginica"]
    ids = [set(ds.load_table(None, worker=k, world=2)[ROW_ID].to_pylist()) for k in range(2)]
    assert ids[0].isdisjoint(ids[1]) and len(ids[0] | ids[1]) == 149  # one duplicate dropped
    assert ds.shards_for(1, 2) == [1, 3]
    x0, _ = ds.load("train", worker=0, world=2)
    x1, _ = ds.load("train", worker=1, world=2)
    assert len(x0) + len(x1) == len(ds.load("train")[0])


def test_reader_falls_back_to_a_replica(store: Store) -> None:
    dv = ingest("builtin:iris", "iris", store, shards=2, replicas=2).version
    ds = open_dataset(store, "iris")
    expected = ds.load("train")
    root = _artifact_root(store)
    first, second = dv.shard_map["files"][0]["paths"]
    (root / first).unlink()  # missing file
    corrupt = root / dv.shard_map["files"][1]["paths"][0]
    corrupt.write_bytes(b"X" + corrupt.read_bytes()[1:])  # fails its checksum
    got = ds.load("train")
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    (root / second).write_bytes(b"garbage")
    with pytest.raises(IntegrityError, match="shard 0: no readable replica"):
        ds.load("train")


def test_text_in_number_column_is_dropped_and_counted(store: Store, tmp_path: Path) -> None:
    # Small file: the sample already shows text, so the column is read as text.
    small = ingest(str(_csv(tmp_path / "s.csv", 40, bad_at=7)), "s", store, shards=2)
    assert small.report.type_errors == {"x1": 1} and small.version.num_rows == 39
    # Big file: the typed fast path fails past the first block and ingest re-reads as text.
    big = ingest(str(_csv(tmp_path / "b.csv", 60_000, bad_at=59_000)), "b", store, shards=2)
    assert big.report.type_errors == {"x1": 1} and big.version.num_rows == 59_999
    assert big.version.schema["features"][1]["type"] == "numeric"


def test_imputation_strategies(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "m.csv"
    src.write_text("a,b,c,d,t\n1,10,u,5,0\n,20,v,,1\n3,,v,7,0\n5,40,,9,1\n8,50,v,3,0\n")
    schema = Schema(target="t", features=[
        Feature(name="a", impute="median"), Feature(name="b", impute="constant", fill_value=-1),
        Feature(name="c", type="categorical"), Feature(name="d", impute="drop")])
    res = ingest(str(src), "m", store, shards=1, replicas=1, schema=schema)
    rep = res.report
    assert rep.dropped_missing == {"d": 1} and res.version.num_rows == 4
    assert rep.imputed == {
        "b": {"count": 1, "strategy": "constant", "value": -1.0},
        "c": {"count": 1, "strategy": "mode", "value": "v"},
    }
    table = open_dataset(store, "m").load_table().sort_by(ROW_ID)
    assert table["b"].to_pylist() == [10.0, -1.0, 40.0, 50.0]
    assert table["c"].to_pylist() == ["u", "v", "v", "v"]
    src.write_text("a,t\n1,0\n,1\n3,0\n10,1\n")
    res = ingest(str(src), "m2", store, shards=1, replicas=1,
                 schema=Schema(target="t", features=[Feature(name="a", impute="median")]))
    assert res.report.imputed["a"]["value"] == 3.0


def test_shard_key_keeps_a_key_in_one_shard(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "k.csv"
    src.write_text("user,x,y\n" + "".join(f"u{i % 7},{i},{i % 2}\n" for i in range(200)))
    dv = ingest(str(src), "k", store, shards=4, replicas=1, shard_key="user").version
    ds = open_dataset(store, "k")
    owners: dict[str, set[int]] = {}
    for shard in range(4):
        for user in ds.read_shard(shard)["user"].to_pylist():
            owners.setdefault(user, set()).add(shard)
    assert len(owners) == 7 and all(len(s) == 1 for s in owners.values())
    assert dv.shard_map["shard_key"] == "user"
    with pytest.raises(DataError, match="shard key 'nope'"):
        ingest(str(src), "k", store, shard_key="nope")


def test_other_sources(store: Store, tmp_path: Path) -> None:
    table = pa.table({"f": [1.0, 2.0, 3.0, 4.0], "g": ["a", "b", "a", "b"],
                      "target": [0.5, 1.5, 2.5, 3.5]})
    pq.write_table(table, tmp_path / "t.parquet")
    assert ingest(str(tmp_path / "t.parquet"), "pq", store).version.schema["task"] == "regression"
    (tmp_path / "t.jsonl").write_text("".join(
        f'{{"f": {i}, "label": "c{i % 2}"}}\n' for i in range(10)))
    assert ingest(str(tmp_path / "t.jsonl"), "js", store).version.num_rows == 10
    np.savez(tmp_path / "img.npz", X=np.arange(6 * 16).reshape(6, 4, 4) % 7, y=np.arange(6) % 2)
    ds_dv = ingest(str(tmp_path / "img.npz"), "npz", store, shards=2).version
    assert open_dataset(store, "npz").input_shape == [1, 4, 4] and ds_dv.num_rows == 6
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE sales (price REAL, qty INTEGER, kind TEXT)")
        conn.executemany("INSERT INTO sales VALUES (?, ?, ?)",
                         [(i * 1.5, i % 5, "ab"[i % 2]) for i in range(30)])
    res = ingest(f"sql:sqlite:///{db}::SELECT price, qty, kind FROM sales", "sql", store)
    assert res.version.num_rows == 30 and res.version.schema["target"] == "kind"


def test_image_folder(store: Store, tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(5):
            pixels = np.full((6, 6), 20 * i + (100 if cls == "dog" else 0), np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / cls / f"{i}.png")
    ingest(str(tmp_path / "imgs"), "pets", store, shards=2)
    ds = open_dataset(store, "pets")
    assert ds.input_shape == [1, 6, 6] and ds.classes == ["cat", "dog"]
    x, y = ds.load("train")
    assert x.shape[1:] == (1, 6, 6) and len(x) == len(y) == 8
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "imgs" / "dog" / "odd.png")
    with pytest.raises(DataError, match=r"odd\.png: image is \[1, 3, 3\]"):
        ingest(str(tmp_path / "imgs"), "pets2", store)


@pytest.mark.parametrize(("content", "message"), [
    (b"a,b,t\n1,2,x\n3,4\n", r"bad\.csv line 3: malformed CSV"),
    (b"a,b,t\n", r"bad\.csv: the dataset is empty"),
    (b"a,b,t\n1,2,caf\xe9\n", r"bad\.csv line 2: .*not valid UTF-8"),
])
def test_bad_files_raise_and_record_nothing(store: Store, tmp_path: Path, content: bytes,
                                           message: str) -> None:
    (tmp_path / "bad.csv").write_bytes(content)
    with pytest.raises(DataError, match=message):
        ingest(str(tmp_path / "bad.csv"), "bad", store)
    assert store.meta.datasets() == []


def test_bad_sources_and_schemas(store: Store, tmp_path: Path) -> None:
    cases = {
        "builtin:nope": "unknown built-in dataset 'builtin:nope'",
        f"sql:sqlite:///{tmp_path}/x.db::SELEC 1": "SQL query failed: near \"SELEC\"",
        str(tmp_path / "none.csv"): "does not exist",
    }
    for source, message in cases.items():
        with pytest.raises(DataError, match=message):
            ingest(source, "x", store)
    (tmp_path / "ok.csv").write_text("a,t\n1,0\n2,1\n")
    with pytest.raises(DataError, match=r"schema column\(s\) \['zz'\] not found"):
        ingest(str(tmp_path / "ok.csv"), "x", store,
               schema=Schema(target="zz", features=[Feature(name="a")]))
    (tmp_path / "bounds.csv").write_text("a,t\n100,0\n200,1\n")
    with pytest.raises(DataError, match="empty after cleaning"):
        ingest(str(tmp_path / "bounds.csv"), "x", store,
               schema=Schema(target="t", features=[Feature(name="a", max=10)]))
    assert store.meta.datasets() == []
    assert not _artifact_root(store).joinpath("datasets").exists()
    assert list(store.artifacts.staging_dir().iterdir()) == []


def test_ingest_into_s3_publishes_staged_replicas(tmp_path: Path, s3_server: str,
                                                  s3_options: dict[str, object]) -> None:
    import hashlib
    import uuid

    import httpx

    from stratum.config import load_settings

    bucket = f"stratum-{uuid.uuid4().hex[:8]}"
    httpx.put(f"{s3_server}/{bucket}").raise_for_status()
    s3 = Store.open(load_settings(home=tmp_path / "home", artifact_url=f"s3://{bucket}/a",
                                  artifact_options=s3_options))
    try:
        dv = ingest(str(_csv(tmp_path / "d.csv", 300)), "d", s3, shards=2, replicas=2).version
        for f in dv.shard_map["files"]:
            blobs = [s3.artifacts.get_bytes(p) for p in f["paths"]]  # verifies the sidecar
            assert blobs[0] == blobs[1] and hashlib.sha256(blobs[0]).hexdigest() == f["sha256"]
        assert len(open_dataset(s3, "d").load_table(None)) == 300
        assert list(s3.artifacts.staging_dir().iterdir()) == []
    finally:
        s3.close()
