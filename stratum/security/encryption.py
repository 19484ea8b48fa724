"""Artifacts encrypted at rest: AES-256-GCM over a stream of chunks.

An artifact can be gigabytes, so it is sealed and opened a chunk at a time and never held
whole. The layout (integers big-endian)::

    header   MAGIC (8) | version (1) | chunk size (4) | key id (8) | nonce prefix (8)
    chunk i  AES-GCM(plaintext[i * size : (i + 1) * size]) with its 16-byte tag

Chunk ``i`` is sealed with the nonce ``prefix || i`` (4 bytes) and the associated data
``header || i (8 bytes) || final (1 byte)``. The random prefix keeps nonces unique per key
across files; the index in nonce and data catches chunks reordered or spliced in from
another file; the header in the data catches a swapped key id or chunk size; and the final
flag, set on the last chunk only, catches a file cut at a chunk boundary, which would
otherwise decrypt cleanly. Every chunk but the last holds exactly ``chunk size`` bytes; the
last may be empty (an empty artifact is one empty final chunk).

A file that does not start with MAGIC is plaintext: artifacts written before a key was
configured still read, so turning encryption on is an upgrade, not a migration. The first
byte (0x89, not ASCII) keeps text, JSON, Parquet (``PAR1``) and safetensors (a little-endian
length) from ever looking sealed.
"""

from __future__ import annotations

import io
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stratum.errors import IntegrityError
from stratum.security.artifact_keys import ArtifactKey, KeyRing, missing_key

MAGIC = b"\x89STRENC\n"
VERSION = 1
CHUNK = 1 << 20
TAG = 16
_HEADER = struct.Struct(">8sBI8s8s")
HEADER_SIZE = _HEADER.size
# A chunk size read from a header is trusted only this far: reading allocates one chunk.
_MAX_CHUNK = 64 << 20
_MAX_CHUNKS = 1 << 32  # the nonce's counter


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


class Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Header:
    chunk_size: int
    key_id: str
    prefix: bytes
    raw: bytes


def is_sealed(head: bytes) -> bool:
    """Whether bytes starting with ``head`` (at least 8 of them) are a sealed artifact."""
    return head[:len(MAGIC)] == MAGIC


def read_header(head: bytes, artifact: str) -> Header | None:
    """The header at the start of ``head``, or None for a plaintext artifact."""
    if not is_sealed(head):
        return None
    if len(head) < HEADER_SIZE:
        raise IntegrityError(f"artifact {artifact} is cut short inside its encryption header")
    _, version, size, kid, prefix = _HEADER.unpack(head[:HEADER_SIZE])
    if version != VERSION:
        raise IntegrityError(f"artifact {artifact} is sealed in format version {version}; "
                             f"this Stratum reads version {VERSION}",
                             hint="upgrade Stratum to read it")
    if not 0 < size <= _MAX_CHUNK:
        raise IntegrityError(f"artifact {artifact} has a damaged encryption header "
                             f"(chunk size {size})")
    return Header(size, kid.hex(), prefix, head[:HEADER_SIZE])


def _nonce(header: Header, index: int) -> bytes:
    return header.prefix + index.to_bytes(4, "big")


def _aad(header: Header, index: int, final: bool) -> bytes:
    return header.raw + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


class Sealer:
    """Encrypts what is written to it into ``sink``; ``close`` seals the final chunk."""

    def __init__(self, sink: Sink, key: ArtifactKey, *, chunk_size: int = CHUNK) -> None:
        if not 0 < chunk_size <= _MAX_CHUNK:
            raise ValueError(f"chunk size {chunk_size} is out of range")
        prefix = secrets.token_bytes(8)
        raw = _HEADER.pack(MAGIC, VERSION, chunk_size, bytes.fromhex(key.key_id), prefix)
        self._header = Header(chunk_size, key.key_id, prefix, raw)
        self._aes = AESGCM(key.secret)
        self._sink = sink
        self._buf = bytearray()
        self._index = 0
        self._closed = False
        sink.write(raw)

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        size = self._header.chunk_size
        pos = 0
        while pos < len(view):
            # A full buffer is sealed only once more data shows it is not the last chunk.
            if len(self._buf) == size:
                self._seal(final=False)
            take = min(size - len(self._buf), len(view) - pos)
            self._buf += view[pos:pos + take]
            pos += take
        return len(view)

    def close(self) -> None:
        if not self._closed:
            self._seal(final=True)
            self._closed = True

    def _seal(self, *, final: bool) -> None:
        if self._index >= _MAX_CHUNKS:
            raise IntegrityError("an artifact is too large to seal with this chunk size")
        self._sink.write(self._aes.encrypt(_nonce(self._header, self._index), bytes(self._buf),
                                           _aad(self._header, self._index, final)))
        self._buf.clear()
        self._index += 1


def seal_stream(src: Source, sink: Sink, key: ArtifactKey) -> None:
    """Encrypt all of ``src`` into ``sink``."""
    sealer = Sealer(sink, key)
    while chunk := src.read(CHUNK):
        sealer.write(chunk)
    sealer.close()


def _read_exact(src: Source, n: int) -> bytes:
    """Up to ``n`` bytes; fewer only at the end (a stream may return short reads)."""
    parts: list[bytes] = []
    want = n
    while want:
        got = src.read(want)
        if not got:
            break
        parts.append(got)
        want -= len(got)
    return b"".join(parts)


def unseal(src: Source, keys: KeyRing | None, artifact: str) -> Iterator[bytes]:
    """The plaintext of the sealed stream ``src``, a chunk at a time.

    IntegrityError (naming ``artifact``) for anything tampered with, reordered or cut
    short; ConfigError naming the key id when no configured key sealed it.
    """
    return _unseal(_read_exact(src, HEADER_SIZE), src, keys, artifact)


def plaintext_chunks(src: Source, keys: KeyRing | None, artifact: str) -> Iterator[bytes]:
    """The plaintext of ``src`` whether it is sealed or not, a chunk at a time."""
    head = _read_exact(src, HEADER_SIZE)
    if is_sealed(head):
        yield from _unseal(head, src, keys, artifact)
        return
    if head:
        yield head
    while chunk := src.read(CHUNK):
        yield chunk


def unseal_bytes(data: bytes, keys: KeyRing | None, artifact: str) -> bytes:
    """The plaintext of a whole sealed artifact held in memory."""
    return b"".join(unseal(io.BytesIO(data), keys, artifact))


def _unseal(head: bytes, src: Source, keys: KeyRing | None, artifact: str
            ) -> Iterator[bytes]:
    header = read_header(head, artifact)
    if header is None:
        raise IntegrityError(f"artifact {artifact} is not sealed")
    if keys is None:
        raise missing_key(artifact, header.key_id, [])
    aes = AESGCM(keys.find(header.key_id, artifact).secret)
    full = header.chunk_size + TAG
    current = _read_exact(src, full)
    index = 0
    while True:
        # One chunk of lookahead tells the last chunk apart: only it is followed by nothing.
        following = _read_exact(src, full) if len(current) == full else b""
        final = not following
        if len(current) < TAG:
            raise IntegrityError(f"artifact {artifact} is cut short (chunk {index} is "
                                 "incomplete)", hint="restore it from a replica or backup")
        try:
            yield aes.decrypt(_nonce(header, index), current, _aad(header, index, final))
        except InvalidTag as exc:
            what = "was cut short or tampered with" if final else "was tampered with"
            raise IntegrityError(f"artifact {artifact} {what}: chunk {index} fails "
                                 "authentication",
                                 hint="restore it from a replica or backup") from exc
        if final:
            return
        current, index = following, index + 1


__all__ = ["CHUNK", "HEADER_SIZE", "MAGIC", "Header", "Sealer", "Sink", "Source", "is_sealed",
           "plaintext_chunks", "read_header", "seal_stream", "unseal", "unseal_bytes"]
