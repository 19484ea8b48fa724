"""The artifact store against a local folder and moto's S3 server (a real S3 HTTP API)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from stratum.errors import IntegrityError, InvalidNameError, NotFoundError
from stratum.store import ArtifactStore, open_artifacts
from stratum.store.artifacts import FsspecArtifactStore, LocalArtifactStore


@pytest.fixture(params=["local", "s3"])
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return open_artifacts(str(tmp_path / "art"))
    import httpx

    options = request.getfixturevalue("s3_options")
    bucket = f"stratum-{uuid.uuid4().hex[:8]}"
    # CreateBucket straight on the S3 API (s3fs sends a LocationConstraint us-east-1 rejects).
    httpx.put(f"{request.getfixturevalue('s3_server')}/{bucket}").raise_for_status()
    store = open_artifacts(f"s3://{bucket}/base", options, tmp_path / "cache")
    assert isinstance(store, FsspecArtifactStore)
    return store


def _corrupt(artifacts: ArtifactStore, path: str, data: bytes) -> None:
    """Overwrite the object's bytes behind the store's back (its sidecar stays)."""
    if isinstance(artifacts, LocalArtifactStore):
        (artifacts.root / path).parent.mkdir(parents=True, exist_ok=True)
        (artifacts.root / path).write_bytes(data)
    else:
        assert isinstance(artifacts, FsspecArtifactStore)
        artifacts.fs.pipe_file(f"{artifacts.base}/{path}", data)


def test_round_trip_and_checksum(artifacts: ArtifactStore, tmp_path: Path) -> None:
    data = b"weights" * 1000
    digest = artifacts.put_bytes("models/m/1/weights.bin", data)
    assert digest == hashlib.sha256(data).hexdigest() == artifacts.checksum(
        "models/m/1/weights.bin")
    assert artifacts.get_bytes("models/m/1/weights.bin") == data
    assert artifacts.local_copy("models/m/1/weights.bin").read_bytes() == data
    src = tmp_path / "local.bin"
    src.write_bytes(b"from a file")
    artifacts.put_file("models/m/1/extra.bin", src)
    assert artifacts.get_bytes("models/m/1/extra.bin") == b"from a file"
    assert artifacts.list("models/m") == ["models/m/1/extra.bin", "models/m/1/weights.bin"]
    assert artifacts.exists("models/m/1/extra.bin")
    artifacts.delete("models/m/1/extra.bin")
    assert not artifacts.exists("models/m/1/extra.bin")
    with pytest.raises(NotFoundError):
        artifacts.get_bytes("models/m/1/extra.bin")


def test_writer_is_atomic(artifacts: ArtifactStore) -> None:
    with artifacts.writer("datasets/d/v/shard-0.parquet") as w:
        w.write(b"part one,")
        w.write(b"part two")
    assert artifacts.get_bytes("datasets/d/v/shard-0.parquet") == b"part one,part two"
    with pytest.raises(RuntimeError), artifacts.writer("datasets/d/v/shard-1.parquet") as w:
        w.write(b"half a file")
        raise RuntimeError("writer died")
    assert not artifacts.exists("datasets/d/v/shard-1.parquet")
    assert artifacts.list("datasets") == ["datasets/d/v/shard-0.parquet"]


def test_corrupted_object_fails_its_checksum(artifacts: ArtifactStore) -> None:
    artifacts.put_bytes("a/b.bin", b"good bytes")
    _corrupt(artifacts, "a/b.bin", b"evil bytes")
    with pytest.raises(IntegrityError, match=r"a/b\.bin failed its checksum"):
        artifacts.get_bytes("a/b.bin")
    assert artifacts.get_bytes("a/b.bin", verify=False) == b"evil bytes"
    _corrupt(artifacts, "c/never-sidecar.bin", b"no checksum")
    with pytest.raises(IntegrityError, match="has no checksum"):
        artifacts.get_bytes("c/never-sidecar.bin")


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/../b", "a//b", "", "a\\b", "./a"])
def test_invalid_names_rejected(artifacts: ArtifactStore, bad: str) -> None:
    with pytest.raises(InvalidNameError):
        artifacts.put_bytes(bad, b"x")
    with pytest.raises(InvalidNameError):
        artifacts.get_bytes(bad)


def test_put_file_as_the_first_write(artifacts: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "first.bin"
    src.write_bytes(b"first write into an empty store")
    digest = artifacts.put_file("x/first.bin", src)
    assert artifacts.get_bytes("x/first.bin") == src.read_bytes()
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest()


def test_staged_file_is_published_with_the_writers_digest(artifacts: ArtifactStore) -> None:
    staged = artifacts.staging_dir() / ".shard-test.parquet"
    staged.write_bytes(b"shard bytes")
    digest = hashlib.sha256(b"shard bytes").hexdigest()
    assert artifacts.put_file("datasets/d/v/shard-0.parquet", staged, digest=digest) == digest
    assert artifacts.checksum("datasets/d/v/shard-0.parquet") == digest
    assert artifacts.get_bytes("datasets/d/v/shard-0.parquet") == b"shard bytes"
    # A local store moves a staged file in (a rename); a remote one uploads it.
    assert staged.exists() == (not isinstance(artifacts, LocalArtifactStore))
    assert artifacts.list("datasets") == ["datasets/d/v/shard-0.parquet"]
