"""The artifact store with keys configured, against a local folder and moto's S3 server:
what is stored is ciphertext, what is read is the exact plaintext, sidecars still verify."""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from pathlib import Path

import pytest

from stratum.errors import ConfigError, IntegrityError
from stratum.security.artifact_keys import KeyRing, load_keyring, write_key_file
from stratum.security.encryption import CHUNK, MAGIC
from stratum.store import ArtifactStore, open_artifacts
from stratum.store.artifacts import FsspecArtifactStore, LocalArtifactStore

MARKER = b"MARKER-plaintext-at-rest-"


def ring(tmp_path: Path, *names: str) -> KeyRing:
    paths = []
    for name in names:
        path = tmp_path / f"{name}.key"
        if not path.exists():
            write_key_file(path)
        paths.append(path)
    keys = load_keyring(paths)
    assert keys is not None
    return keys


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, object]]:
    if request.param == "local":
        return str(tmp_path / "art"), {}
    import httpx

    bucket = f"stratum-{uuid.uuid4().hex[:8]}"
    httpx.put(f"{request.getfixturevalue('s3_server')}/{bucket}").raise_for_status()
    return f"s3://{bucket}/base", request.getfixturevalue("s3_options")


def opened(location: tuple[str, dict[str, object]], tmp_path: Path,
           keys: KeyRing | None) -> ArtifactStore:
    url, options = location
    return open_artifacts(url, options, tmp_path / "cache", keys=keys)


def raw(artifacts: ArtifactStore, path: str) -> bytes:
    """The stored bytes, read behind the store's back."""
    if isinstance(artifacts, LocalArtifactStore):
        return (artifacts.root / path).read_bytes()
    assert isinstance(artifacts, FsspecArtifactStore)
    data: bytes = artifacts.fs.cat_file(f"{artifacts.base}/{path}")
    return data


def overwrite(artifacts: ArtifactStore, path: str, data: bytes) -> None:
    if isinstance(artifacts, LocalArtifactStore):
        (artifacts.root / path).write_bytes(data)
    else:
        assert isinstance(artifacts, FsspecArtifactStore)
        artifacts.fs.pipe_file(f"{artifacts.base}/{path}", data)


def test_every_write_path_seals_and_every_read_path_opens(
        location: tuple[str, dict[str, object]], tmp_path: Path) -> None:
    store = opened(location, tmp_path, ring(tmp_path, "k1"))
    big = MARKER + os.urandom(2 * CHUNK + 77) + MARKER  # several chunks
    small = MARKER + b"spec"
    src = tmp_path / "weights.bin"
    src.write_bytes(big)
    staged = store.staging_dir() / ".shard-0.parquet"
    staged.write_bytes(small)
    digests = {
        "a/put_bytes.bin": store.put_bytes("a/put_bytes.bin", small),
        "a/put_file.bin": store.put_file("a/put_file.bin", src),
        "a/staged.bin": store.put_file("a/staged.bin", staged,
                                       digest=hashlib.sha256(small).hexdigest()),
        "a/empty.bin": store.put_bytes("a/empty.bin", b""),
    }
    with store.writer("a/writer.bin") as w:
        w.write(big[:100])
        w.write(big[100:])
    assert w.digest is not None
    digests["a/writer.bin"] = w.digest
    assert not staged.exists()  # sealed, then gone: no plaintext left in staging
    expected = {"a/put_bytes.bin": small, "a/put_file.bin": big, "a/staged.bin": small,
                "a/empty.bin": b"", "a/writer.bin": big}
    assert store.list("a") == sorted(expected)
    for path, data in expected.items():
        stored = raw(store, path)
        assert stored.startswith(MAGIC) and MARKER not in stored, path
        # the sidecar is the plaintext's SHA-256, the identity callers pass around
        assert digests[path] == store.checksum(path) == hashlib.sha256(data).hexdigest()
        assert store.get_bytes(path) == data
        assert store.verify(path) == digests[path]
        copy = store.local_copy(path)
        assert copy.read_bytes() == data and stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert list(store.staging_dir().iterdir()) == []


def test_plaintext_from_before_still_reads_and_encrypt_rewrites_it(
        location: tuple[str, dict[str, object]], tmp_path: Path) -> None:
    plain = opened(location, tmp_path, None)
    data = MARKER + os.urandom(CHUNK + 5)
    plain.put_bytes("old/weights.bin", data)
    digest = plain.checksum("old/weights.bin")
    keyed = opened(location, tmp_path, ring(tmp_path, "k1"))
    assert keyed.get_bytes("old/weights.bin") == data  # an upgrade, not a migration
    assert keyed.local_copy("old/weights.bin").read_bytes() == data
    assert keyed.reseal("old/weights.bin") is True
    assert raw(keyed, "old/weights.bin").startswith(MAGIC)
    assert keyed.checksum("old/weights.bin") == digest and keyed.verify("old/weights.bin")
    assert keyed.get_bytes("old/weights.bin") == data
    assert keyed.reseal("old/weights.bin") is False  # already under the first key
    # rotation: a new first key; the old one stays listed until everything is rewritten
    rotated = opened(location, tmp_path, ring(tmp_path, "k2", "k1"))
    assert rotated.get_bytes("old/weights.bin") == data
    assert rotated.reseal("old/weights.bin") is True
    only_new = opened(location, tmp_path, ring(tmp_path, "k2"))
    assert only_new.get_bytes("old/weights.bin") == data
    k2 = ring(tmp_path, "k2").primary.key_id
    for store in (plain, opened(location, tmp_path, ring(tmp_path, "k1"))):
        with pytest.raises(ConfigError, match=f"encrypted with key {k2}"):
            store.get_bytes("old/weights.bin")
    with pytest.raises(ConfigError, match="no artifact key"):
        plain.reseal("old/weights.bin")


def test_tampered_ciphertext_and_damaged_plaintext(
        location: tuple[str, dict[str, object]], tmp_path: Path) -> None:
    store = opened(location, tmp_path, ring(tmp_path, "k1"))
    store.put_bytes("m/w.bin", os.urandom(3000))
    bad = bytearray(raw(store, "m/w.bin"))
    bad[len(bad) // 2] ^= 0x40
    overwrite(store, "m/w.bin", bytes(bad))
    for read in (store.get_bytes, store.local_copy, store.verify):
        with pytest.raises(IntegrityError, match=r"artifact m/w\.bin .*tampered"):
            read("m/w.bin")
    # a damaged plaintext object is never sealed as if it were good
    opened(location, tmp_path, None).put_bytes("m/plain.bin", b"good")
    overwrite(store, "m/plain.bin", b"evil")
    with pytest.raises(IntegrityError, match="not rewritten"):
        store.reseal("m/plain.bin")
    assert raw(store, "m/plain.bin") == b"evil"


def test_key_files_setting_reaches_the_store_and_child_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stratum.config import Settings, load_settings
    from stratum.store import Store

    assert load_settings(home=tmp_path / "h").artifact_key_files == []  # off by default
    monkeypatch.chdir(tmp_path)
    write_key_file(tmp_path / "new.key")
    write_key_file(tmp_path / "old.key")
    monkeypatch.setenv("STRATUM_ARTIFACT_KEY_FILES", "new.key, old.key")
    settings = load_settings(home=tmp_path / "h")
    # absolute: children start in / (config/child.py) and get the parent's exact settings
    assert settings.artifact_key_files == [tmp_path / "new.key", tmp_path / "old.key"]
    child = Settings.model_validate_json(settings.child_env()["STRATUM_SETTINGS_JSON"])
    assert child.artifact_key_files == settings.artifact_key_files
    monkeypatch.setenv("STRATUM_ARTIFACT_KEY_FILES", '["old.key"]')
    assert load_settings(home=tmp_path / "h").artifact_key_files == [tmp_path / "old.key"]
    store = Store.open(child)
    try:
        assert store.artifacts.keys is not None and len(store.artifacts.keys.ids) == 2
        store.artifacts.put_bytes("x/y.bin", MARKER)
        assert MARKER not in raw(store.artifacts, "x/y.bin")
    finally:
        store.close()
    missing = load_settings(home=tmp_path / "h", artifact_key_files=[tmp_path / "gone.key"])
    with pytest.raises(ConfigError, match=r"gone\.key does not exist.*artifacts keygen"):
        Store.open(missing)
