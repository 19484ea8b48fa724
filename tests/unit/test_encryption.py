"""The artifact cipher (AES-256-GCM in chunks) and its key files, on real bytes and files."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from stratum.errors import ConfigError, ConflictError, IntegrityError
from stratum.security.artifact_keys import (
    ArtifactKey,
    KeyRing,
    load_keyring,
    new_key,
    read_key_file,
    write_key_file,
)
from stratum.security.encryption import (
    CHUNK,
    HEADER_SIZE,
    MAGIC,
    Sealer,
    plaintext_chunks,
    read_header,
    seal_stream,
    unseal,
    unseal_bytes,
)

SMALL = 64  # a chunk size that makes chunk-boundary cases cheap to build
TAG = 16


def key(name: str = "k") -> ArtifactKey:
    return ArtifactKey(new_key(), name)


def seal(data: bytes, k: ArtifactKey, chunk_size: int = CHUNK) -> bytes:
    out = io.BytesIO()
    sealer = Sealer(out, k, chunk_size=chunk_size)
    sealer.write(data)
    sealer.close()
    return out.getvalue()


def opened(blob: bytes, ring: KeyRing | None) -> bytes:
    return unseal_bytes(blob, ring, "models/m/1/weights.safetensors")


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_round_trip(size: int) -> None:
    data = os.urandom(size)
    k = key()
    src, out = io.BytesIO(data), io.BytesIO()
    seal_stream(src, out, k)
    blob = out.getvalue()
    chunks = max(1, -(-size // CHUNK))  # an empty artifact is one empty final chunk
    assert len(blob) == HEADER_SIZE + size + chunks * TAG
    assert blob.startswith(MAGIC)
    header = read_header(blob, "x")
    assert header is not None and header.key_id == k.key_id and header.chunk_size == CHUNK
    assert b"".join(unseal(io.BytesIO(blob), KeyRing([k]), "x")) == data


def test_writes_of_any_size_give_the_same_plaintext() -> None:
    k, data = key(), os.urandom(10 * SMALL + 3)
    out = io.BytesIO()
    sealer = Sealer(out, k, chunk_size=SMALL)
    for start, n in ((0, 1), (1, SMALL), (SMALL + 1, 3 * SMALL), (4 * SMALL + 1, 10**6)):
        sealer.write(data[start:start + n])
    sealer.close()
    assert opened(out.getvalue(), KeyRing([k])) == data


def test_ciphertext_hides_the_plaintext_and_differs_every_time() -> None:
    k, data = key(), b"MARKER-do-not-store-in-clear " * 100
    a, b = seal(data, k), seal(data, k)
    assert b"MARKER" not in a and a != b  # a fresh nonce prefix per file


def test_plaintext_passes_through_unchanged() -> None:
    for data in (b"", b"{", b"PAR1" + os.urandom(3 * CHUNK)):
        assert b"".join(plaintext_chunks(io.BytesIO(data), None, "x")) == data
    k = key()
    assert b"".join(plaintext_chunks(io.BytesIO(seal(b"hi", k)), KeyRing([k]), "x")) == b"hi"


def _chunks(blob: bytes, size: int = SMALL) -> tuple[bytes, list[bytes]]:
    body, full = blob[HEADER_SIZE:], size + TAG
    return blob[:HEADER_SIZE], [body[i:i + full] for i in range(0, len(body), full)]


def test_a_flipped_byte_anywhere_fails_naming_the_artifact() -> None:
    k = key()
    blob = seal(os.urandom(3 * SMALL), k, SMALL)
    ring = KeyRing([k])
    # chunk size byte, a nonce-prefix byte, a body byte of each chunk, the last tag byte
    for at in (12, HEADER_SIZE - 1, HEADER_SIZE + 5, HEADER_SIZE + SMALL + TAG + 5,
               len(blob) - 1):
        bad = bytearray(blob)
        bad[at] ^= 0x01
        with pytest.raises(IntegrityError, match=r"models/m/1/weights\.safetensors"):
            opened(bytes(bad), ring)


def test_truncation_and_reordering_are_detected() -> None:
    k = key()
    ring = KeyRing([k])
    head, chunks = _chunks(seal(os.urandom(3 * SMALL + 7), k, SMALL))
    assert len(chunks) == 4
    cases = {
        "cut at a chunk boundary": head + b"".join(chunks[:3]),
        "cut inside a chunk": head + b"".join(chunks)[:-5],
        "only the header": head,
        "chunks swapped": head + chunks[1] + chunks[0] + chunks[2] + chunks[3],
        "a chunk dropped": head + chunks[0] + chunks[2] + chunks[3],
        "bytes appended": head + b"".join(chunks) + chunks[3],
    }
    for what, blob in cases.items():
        with pytest.raises(IntegrityError, match=r"cut short|tampered") as info:
            opened(blob, ring)
        assert "weights.safetensors" in str(info.value), what
    with pytest.raises(IntegrityError, match="cut short"):
        opened(head[:HEADER_SIZE - 3], ring)


def test_a_chunk_from_another_file_under_the_same_key_is_refused() -> None:
    k = key()
    head_a, a = _chunks(seal(os.urandom(2 * SMALL), k, SMALL))
    _, b = _chunks(seal(os.urandom(2 * SMALL), k, SMALL))
    with pytest.raises(IntegrityError):
        opened(head_a + a[0] + b[1], KeyRing([k]))


def test_a_missing_key_is_named() -> None:
    old, other = key("old.key"), key("other.key")
    blob = seal(b"secret", old)
    with pytest.raises(ConfigError, match=f"encrypted with key {old.key_id}") as info:
        opened(blob, KeyRing([other]))
    assert other.key_id in str(info.value) and "artifact_key_files" in str(info.value)
    with pytest.raises(ConfigError, match=f"key {old.key_id}, which is not configured"):
        opened(blob, None)


def test_rotation_first_key_seals_any_key_opens() -> None:
    old, new = key("old"), key("new")
    ring = KeyRing([new, old])
    assert ring.primary is new
    assert opened(seal(b"from before", old), ring) == b"from before"
    sealed_now = seal(b"from now", ring.primary)
    header = read_header(sealed_now, "x")
    assert header is not None and header.key_id == new.key_id
    assert opened(sealed_now, ring) == b"from now"


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "artifacts.key"
    kid = write_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path).key_id == kid and len(kid) == 16
    with pytest.raises(ConflictError, match="never overwritten"):
        write_key_file(path)
    ring = load_keyring([path])
    assert ring is not None and ring.ids == [kid] and load_keyring([]) is None
    assert "secret" not in repr(ring.primary) and path.read_text().strip() not in repr(
        ring.primary)
    with pytest.raises(ConfigError, match=r"does not exist.*artifacts keygen"):
        read_key_file(tmp_path / "nope.key")
    (tmp_path / "bad.key").write_text("not base64 at all!\n")
    with pytest.raises(ConfigError, match="does not hold a base64 artifact key"):
        read_key_file(tmp_path / "bad.key")
    (tmp_path / "short.key").write_text("c2hvcnQ=\n")
    with pytest.raises(ConfigError, match="holds 5 bytes, not 32"):
        read_key_file(tmp_path / "short.key")
