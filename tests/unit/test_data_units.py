"""Unit tests of the data layer's pieces: cleaning, preprocessing, sharding, split, augment."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratum.data.augment import Augment
from stratum.data.cleaning import CleaningReport, Deduper, clean_batch
from stratum.data.preprocessing import Pipeline, build_pipeline, fit_numeric_step
from stratum.data.schema import Feature, Schema
from stratum.data.sharding import hash_array, shard_of
from stratum.data.split import Splitter, split_pattern
from stratum.errors import DataError


# -- cleaning ---------------------------------------------------------------------------
def test_clean_batch_counts_every_kind_of_invalid_row() -> None:
    schema = Schema(target="y", features=[
        Feature(name="a", type="numeric", min=0, max=10),
        Feature(name="b", type="numeric", impute="drop"),
        Feature(name="c", type="categorical", categories=["red", "blue"]),
    ], classes=["p", "q"])
    batch = pa.record_batch({
        "a": ["1", "x", "20", "3", "4", "5", " 6 ", "7"],
        "b": [1.0, 2.0, 3.0, None, 5.0, 6.0, 7.0, 8.0],
        "c": ["red", "red", "red", "red", "green", "blue", None, "red"],
        "y": ["p", "p", "p", "p", "p", None, "q", "zz"],
    })
    report = CleaningReport()
    out = clean_batch(batch, schema, pa.string(), report)
    assert report.rows_read == 8
    assert report.type_errors == {"a": 1}
    assert report.out_of_bounds == {"a": 1}
    assert report.unknown_category == {"c": 1, "y": 1}
    assert report.missing_target == 1
    assert report.invalid_rows == 5
    assert report.dropped_missing == {"b": 1}
    assert out.column("a").to_pylist() == [1.0, 6.0]
    assert out.column("c").to_pylist() == ["red", None]  # missing: imputed later
    assert out.schema.field("a").type == pa.float64()


def test_deduper_keeps_first_occurrence_across_batches() -> None:
    d = Deduper()
    assert d.keep(np.array([1, 2, 2, 3], np.uint64)).tolist() == [True, True, False, True]
    assert d.keep(np.array([3, 4, 1], np.uint64)).tolist() == [False, True, False]
    for i in range(12):
        d.keep(np.array([100 + i], np.uint64))
    assert d.keep(np.array([4, 999, 105, 999], np.uint64)).tolist() == [False, True, False,
                                                                         False]
    # Against a plain set, on random batches with repeats inside and across batches.
    rng = np.random.default_rng(0)
    ref, seen = Deduper(), set()
    for _ in range(20):
        batch = rng.integers(0, 5_000, 700).astype(np.uint64)
        expected = []
        for h in batch.tolist():
            expected.append(h not in seen)
            seen.add(h)
        assert ref.keep(batch).tolist() == expected
    assert ref.seen.tolist() == sorted(seen)


# -- shard files ----------------------------------------------------------------------------
def test_shard_files_writes_identical_hashed_replicas_and_cleans_up(tmp_path) -> None:
    import hashlib

    import pyarrow.parquet as pq

    from stratum.data.spill import ShardFiles

    files = ShardFiles(tmp_path / "stage", shards=3, replicas=2, dictionary=["c"])
    for start in range(0, 1000, 250):  # four batches; shard 2 never gets a row
        t = pa.table({"x": np.arange(start, start + 250, dtype=np.float64),
                      "c": pa.array(["a", "b"] * 125)})
        files.write(t, [0, 100, 250, 250])
    done = files.finish()
    assert len(done) == 3
    for i, (paths, digest) in enumerate(done):
        blobs = [p.read_bytes() for p in paths]
        assert blobs[0] == blobs[1] and hashlib.sha256(blobs[0]).hexdigest() == digest
        table = pq.read_table(paths[0])
        assert table.num_rows == [400, 600, 0][i] and table.column_names == ["x", "c"]
    meta = pq.ParquetFile(done[0][0][0]).metadata.row_group(0)
    encodings = {meta.column(j).path_in_schema: meta.column(j).encodings for j in range(2)}
    assert "RLE_DICTIONARY" in encodings["c"] and "RLE_DICTIONARY" not in encodings["x"]
    files.discard()
    assert list((tmp_path / "stage").iterdir()) == []


def test_shard_files_surfaces_a_writer_error(tmp_path) -> None:
    from stratum.data.spill import ShardFiles

    files = ShardFiles(tmp_path / "stage", shards=1, replicas=1)
    files.write(pa.table({"x": [1.0]}), [0, 1])
    files.write(pa.table({"x": ["text"]}), [0, 1])  # schema differs from the open writer
    with pytest.raises(ValueError, match="schema"):
        files.finish()
    files.discard()
    assert list((tmp_path / "stage").iterdir()) == []


# -- preprocessing --------------------------------------------------------------------------
def _tabular_pipeline() -> Pipeline:
    steps, centers, scales = [], [], []
    for name, scale, stats in (("x", "standardize", {"mean": 2.0, "std": 4.0}),
                               ("z", "minmax", {"min": -1.0, "max": 3.0})):
        step, c, s = fit_numeric_step(name, scale, stats)
        steps.append(step)
        centers.append(c)
        scales.append(s)
    steps.insert(1, {"name": "color", "kind": "categorical", "categories": ["blue", "red"]})
    return build_pipeline(steps, centers, scales, [2.0, 0.5])


def test_pipeline_round_trip_gives_identical_transform() -> None:
    p = _tabular_pipeline()
    cols = {"x": [2.0, 6.0, None], "color": ["red", "green", "blue"], "z": [-1.0, 3.0, 1.0]}
    expected = np.array([[0, 0, 1, 0], [1, 0, 0, 1], [0, 1, 0, 0.5]], np.float32)
    np.testing.assert_allclose(p.transform(cols), expected)
    config, arrays = p.to_artifacts()
    import json

    from safetensors.numpy import load, save

    q = Pipeline.from_artifacts(json.loads(json.dumps(config)), load(save(arrays)))
    assert q.input_shape == [4] and q.feature_names == ["x", "color", "z"]
    assert np.array_equal(q.transform(cols), p.transform(cols))
    matrix = np.array([[2.0, "red", -1.0], [6.0, "green", 3.0]], dtype=object)
    assert np.array_equal(q.transform_matrix(matrix), p.transform(cols)[:2])


def test_pipeline_image_scaling_accepts_flat_and_nchw() -> None:
    p = Pipeline([{"name": "image", "kind": "image", "shape": [1, 2, 2], "max_value": 255.0,
                   "mean": 0.5, "std": 0.25}], {})
    flat = np.array([[0, 255, 51, 102]], np.uint8)
    out = p.transform_matrix(flat)
    assert out.shape == (1, 1, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(-1), [-2.0, 2.0, -1.2, -0.4], rtol=1e-6)
    assert np.array_equal(p.transform_matrix(flat.reshape(1, 1, 2, 2)), out)
    with pytest.raises(DataError, match="each sample needs 4 values"):
        p.transform_matrix(np.zeros((1, 5)))


def test_pipeline_rejects_missing_feature() -> None:
    with pytest.raises(DataError, match="missing feature"):
        _tabular_pipeline().transform({"x": [1.0]})


# -- sharding -------------------------------------------------------------------------------
def test_shards_are_balanced_on_100k_uniform_keys() -> None:
    for keys in (np.arange(100_000), pa.array([f"user-{i}" for i in range(100_000)])):
        counts = np.bincount(shard_of(keys, 8), minlength=8)
        assert counts.sum() == 100_000
        assert counts.max() / counts.min() <= 1.1


def test_same_input_same_shards_and_known_values() -> None:
    keys = np.arange(1000)
    assert np.array_equal(shard_of(keys, 8), shard_of(keys.copy(), 8))
    # The hash is exactly splitmix64 (checked against a plain-Python reference), so it can
    # never drift with numpy or pyarrow versions; versions and shard maps depend on it.
    def reference(x: int) -> int:
        mask = (1 << 64) - 1
        z = (x + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    keys = [0, 1, 2, 3, 12345, 2**40 + 7]
    assert shard_of(np.array(keys), 8).tolist() == [reference(k) % 8 for k in keys]
    assert hash_array(pa.array(["ab"]))[0] != hash_array(pa.array(["ba"]))[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=12) | st.none(), min_size=1, max_size=60),
       st.integers(1, 16), st.integers(0, 59))
def test_shard_assignment_is_independent_of_batching(keys: list[str | None], n: int,
                                                      cut: int) -> None:
    arr = pa.array(keys, pa.string())
    whole = shard_of(arr, n)
    cut = min(cut, len(keys))
    parts = np.concatenate([shard_of(arr.slice(0, cut), n), shard_of(arr.slice(cut), n)])
    assert np.array_equal(whole, parts)
    assert ((whole >= 0) & (whole < n)).all()


# -- split ----------------------------------------------------------------------------------
def test_split_pattern_proportions() -> None:
    assert np.bincount(split_pattern(0.1, 0.1), minlength=3).tolist() == [16, 2, 2]
    assert np.bincount(split_pattern(0.15, 0.25), minlength=3).tolist() == [12, 3, 5]


def test_split_is_stratified_and_independent_of_batch_size() -> None:
    rng = np.random.default_rng(0)
    labels = rng.choice(["a", "b", "c"], size=3000, p=[0.6, 0.3, 0.1])
    one = Splitter(0.1, 0.2).assign(labels, len(labels))
    s = Splitter(0.1, 0.2)
    many = np.concatenate([s.assign(labels[i:i + 77], len(labels[i:i + 77]))
                           for i in range(0, 3000, 77)])
    assert np.array_equal(one, many)
    for cls in "abc":
        share = np.bincount(one[labels == cls], minlength=3) / (labels == cls).sum()
        np.testing.assert_allclose(share, [0.7, 0.1, 0.2], atol=0.02)


# -- augmentation ---------------------------------------------------------------------------
def test_augment_is_seeded_and_keeps_shape_and_type() -> None:
    import torch

    x = torch.rand(4, 1, 12, 12)
    kw = {"rotation": 15, "crop": 2, "brightness": 0.2, "contrast": 0.2, "noise": 0.1}
    a, b, c = Augment(seed=1, **kw), Augment(seed=1, **kw), Augment(seed=2, **kw)
    out = a(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, b(x)) and not torch.equal(out, c(x))
    assert not torch.equal(out, a(x))  # the generator moves on between batches
    arr = Augment(seed=3, noise=0.5)(np.zeros((2, 1, 4, 4), np.float32))
    assert isinstance(arr, np.ndarray) and arr.std() > 0.1
    # Rotation by 90 degrees moves a pixel from the left edge to the top/bottom edge.
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 0] = 1.0
    from stratum.data.augment import rotate

    rot = rotate(img, torch.tensor([90.0]))
    assert rot[0, 0, 2, 0] < 0.1 and max(rot[0, 0, 0, 2], rot[0, 0, 4, 2]) > 0.9
    with pytest.raises(DataError):
        Augment()(np.zeros((4, 4)))


def test_prefetch_keeps_order_raises_in_place_and_stops_its_thread() -> None:
    import threading

    from stratum.data.prefetch import prefetch

    def gen(fail_at: int | None):  # type: ignore[no-untyped-def]
        for i in range(6):
            if i == fail_at:
                raise ValueError(f"bad block {i}")
            yield i

    assert list(prefetch(gen(None))) == list(range(6))
    seen = []
    with pytest.raises(ValueError, match="bad block 3"):
        for v in prefetch(gen(3)):
            seen.append(v)
    assert seen == [0, 1, 2]  # every batch before the failure, none after
    before = threading.active_count()
    for v in prefetch(gen(None), depth=1):
        if v == 1:
            break  # the consumer leaves early: the reader thread must not linger
    assert threading.active_count() <= before
