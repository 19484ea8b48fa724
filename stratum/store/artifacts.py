"""Artifact storage (shards, checkpoints, weights) behind one small Protocol.

Two implementations, picked from the URL: a local folder (the embedded default) and any
fsspec filesystem such as ``s3://bucket/prefix`` (at scale). Writes are atomic — a local
temp file renamed into place, or an object PUT / multipart upload that S3 publishes only
when complete — and every object gets a ``.sha256`` sidecar that reads verify.

With a key ring (the ``artifact_key_files`` setting) every write path seals the bytes
(``stratum.security.encryption``) and every read path opens them. The sidecar stays the
SHA-256 of the plaintext, the content identity callers pass around, and is checked after
decryption as before; a plaintext object written before the keys were configured still
reads, told apart by the sealed format's magic bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import fsspec

from stratum.errors import ConfigError, IntegrityError, NotFoundError
from stratum.security.artifact_keys import KeyRing
from stratum.security.encryption import HEADER_SIZE, Sealer, is_sealed, unseal_bytes
from stratum.security.names import validate_artifact_path
from stratum.store.sealed import SealedAccess

_CHUNK = 1 << 20
SIDECAR = ".sha256"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class PendingWrite:
    """A file being written; ``digest`` is set once the write is committed.

    Write through ``write``: it hashes the plaintext and, with a key, seals it on its way
    into ``handle`` (the temp file, which then holds ciphertext).
    """

    def __init__(self, handle: IO[bytes], local_path: Path, keys: KeyRing | None = None
                 ) -> None:
        self.handle = handle
        self.local_path = local_path
        self.digest: str | None = None
        self._hash = hashlib.sha256()
        self._sealer = Sealer(handle, keys.primary) if keys is not None else None

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        if self._sealer is not None:
            return self._sealer.write(data)
        return self.handle.write(data)

    def finish(self) -> str:
        """Seal the last chunk (if sealing); return the plaintext's SHA-256."""
        if self._sealer is not None:
            self._sealer.close()
        return self._hash.hexdigest()


@runtime_checkable
class ArtifactStore(Protocol):
    url: str
    keys: KeyRing | None  # None: objects are written as given

    def put_file(self, path: str, local_path: str | Path, *, digest: str | None = None
                 ) -> str: ...
    def staging_dir(self) -> Path: ...
    def put_bytes(self, path: str, data: bytes) -> str: ...
    def writer(self, path: str) -> Any: ...
    def get_bytes(self, path: str, *, verify: bool = True) -> bytes: ...
    def local_copy(self, path: str, *, verify: bool = True) -> Path: ...
    def checksum(self, path: str) -> str: ...
    def exists(self, path: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, path: str) -> None: ...
    def reseal(self, path: str) -> bool: ...
    def verify(self, path: str) -> str: ...


class _Base(SealedAccess):
    """Shared logic: the sidecar protocol and the streaming writer."""

    url: str
    keys: KeyRing | None = None

    def staging_dir(self) -> Path:
        """A local folder for files about to be published: ``put_file`` moves a file from
        here into a local store (a rename) instead of copying it."""
        return self._tmp_dir()

    def _tmp_dir(self) -> Path:
        """The folder for temp files, created on first use (a fresh store has none)."""
        tmp = self._tmp_root()
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    def _tmp_root(self) -> Path:
        raise NotImplementedError

    def _read(self, path: str) -> bytes:
        raise NotImplementedError

    def put_file(self, path: str, local_path: str | Path, *, digest: str | None = None
                 ) -> str:
        """Publish a local file under ``path``; a file in ``staging_dir()`` is moved, not
        copied (with a key: sealed, then removed). Pass ``digest`` when the caller hashed
        the bytes as it wrote them."""
        validate_artifact_path(path)
        local_path = Path(local_path)
        digest = digest or sha256_file(local_path)
        if self.keys is None:
            self._commit(path, local_path)
        else:
            self._commit_sealed(path, local_path, self.keys)
        self._write_sidecar(path, digest)
        return digest

    def put_bytes(self, path: str, data: bytes) -> str:
        with self.writer(path) as w:
            w.write(data)
        assert w.digest is not None
        return w.digest

    @contextmanager
    def writer(self, path: str) -> Iterator[PendingWrite]:
        """Stream into a temp file; published under ``path`` only if the block succeeds."""
        validate_artifact_path(path)
        fd, tmp = tempfile.mkstemp(dir=self._tmp_dir(), prefix=".part-")
        local = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as fh:
                pending = PendingWrite(fh, local, self.keys)
                yield pending
                digest = pending.finish()
                fh.flush()
                os.fsync(fh.fileno())
            pending.digest = digest
            self._commit(path, local)
            self._write_sidecar(path, pending.digest)
        finally:
            local.unlink(missing_ok=True)

    def _write_sidecar(self, path: str, digest: str) -> None:
        tmp_dir = self._tmp_dir()
        fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=".sum-")
        with os.fdopen(fd, "w") as fh:
            fh.write(digest)
        try:
            self._commit(path + SIDECAR, Path(tmp))
        finally:
            Path(tmp).unlink(missing_ok=True)

    def checksum(self, path: str) -> str:
        validate_artifact_path(path)
        try:
            return self._read(path + SIDECAR).decode().strip()
        except FileNotFoundError as exc:
            raise IntegrityError(
                f"artifact {path} has no checksum; it was never completely written"
            ) from exc

    def get_bytes(self, path: str, *, verify: bool = True) -> bytes:
        validate_artifact_path(path)
        try:
            data = self._read(path)
        except FileNotFoundError as exc:
            raise NotFoundError(f"artifact {path} not found in {self.url}") from exc
        if is_sealed(data):  # whole in memory, as asked: get_bytes returns every byte
            data = unseal_bytes(data, self.keys, path)
        if verify:
            expected = self.checksum(path)
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise IntegrityError(
                    f"artifact {path} failed its checksum (expected {expected[:12]}…, "
                    f"got {actual[:12]}…)"
                )
        return data


class LocalArtifactStore(_Base):
    """Artifacts in a local folder; temp files live inside it so rename stays atomic."""

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None, *,
                 keys: KeyRing | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)
        self.keys = keys
        # Only decrypted copies (local_copy of a sealed object) go here.
        self.cache = (Path(cache_dir) / "stratum-artifact-cache" if cache_dir is not None
                      else self.root / ".cache")

    def _tmp_root(self) -> Path:
        return self.root / ".tmp"

    def _cache_dir(self) -> Path:
        self.cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.cache

    def _path(self, path: str) -> Path:
        return self.root / validate_artifact_path(path)

    def _commit(self, path: str, local_path: Path) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if local_path.parent == self._tmp_dir():
            os.replace(local_path, target)
        else:  # a caller's file: copy beside the target first, then rename atomically
            fd, tmp = tempfile.mkstemp(dir=self._tmp_dir(), prefix=".cp-")
            os.close(fd)
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, target)

    def _read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def _open_raw(self, path: str) -> IO[bytes]:
        return open(self.root / path, "rb")

    def local_copy(self, path: str, *, verify: bool = True) -> Path:
        """The object's own file when it is plaintext; a sealed one is decrypted into a
        private cache file."""
        p = self._path(path)
        if not p.exists():
            raise NotFoundError(f"artifact {path} not found in {self.url}")
        with open(p, "rb") as fh:
            sealed = is_sealed(fh.read(HEADER_SIZE))
        if sealed:
            return self._materialize(path, verify=verify)
        if verify and sha256_file(p) != self.checksum(path):
            raise IntegrityError(f"artifact {path} failed its checksum")
        return p

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        found = (p.relative_to(self.root) for p in base.rglob("*") if p.is_file())
        # Temp and cache folders start with "." and so are never artifact paths.
        return sorted(str(p) for p in found
                      if not p.name.endswith(SIDECAR) and p.parts[0] not in (".tmp", ".cache"))

    def delete(self, path: str) -> None:
        self._path(path).unlink(missing_ok=True)
        (self.root / (path + SIDECAR)).unlink(missing_ok=True)


class FsspecArtifactStore(_Base):
    """Artifacts on any fsspec filesystem (S3-compatible via s3fs); local temp, then upload."""

    def __init__(self, url: str, options: dict[str, Any] | None = None,
                 cache_dir: str | Path | None = None, *, keys: KeyRing | None = None) -> None:
        self.url = url.rstrip("/")
        self.keys = keys
        try:
            self.fs, self.base = fsspec.core.url_to_fs(self.url, **(options or {}))
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"cannot open artifact store {url!r}: {exc}") from exc
        self.cache = Path(cache_dir or tempfile.gettempdir()) / "stratum-artifact-cache"
        self.cache.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _tmp_root(self) -> Path:
        return self.cache / ".tmp"

    def _cache_dir(self) -> Path:
        return self.cache

    def _full(self, path: str) -> str:
        return f"{self.base}/{validate_artifact_path(path)}"

    def _commit(self, path: str, local_path: Path) -> None:
        # A single PUT or a completed multipart upload: readers never see a partial object.
        self.fs.put_file(str(local_path), self._full(path))

    def _read(self, path: str) -> bytes:
        data: bytes = self.fs.cat_file(self._full(path))
        return data

    def _open_raw(self, path: str) -> IO[bytes]:
        handle: IO[bytes] = self.fs.open(self._full(path), "rb")
        return handle

    def local_copy(self, path: str, *, verify: bool = True) -> Path:
        return self._materialize(path, verify=verify)

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self._full(path)))

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.base}/{prefix}".rstrip("/")
        try:
            found = self.fs.find(root)
        except FileNotFoundError:
            return []
        start = len(self.base) + 1
        return sorted(p[start:] for p in found if not p.endswith(SIDECAR))

    def delete(self, path: str) -> None:
        for p in (self._full(path), self._full(path) + SIDECAR):
            if self.fs.exists(p):
                self.fs.rm_file(p)


def open_artifacts(url: str, options: dict[str, Any] | None = None,
                   cache_dir: str | Path | None = None, *, keys: KeyRing | None = None
                   ) -> ArtifactStore:
    """Pick the implementation from the URL: a plain path or ``file://`` → local folder.
    With ``keys`` every object is written sealed (see the module docstring)."""
    if "://" not in url or url.startswith("file://"):
        return LocalArtifactStore(url.removeprefix("file://"), cache_dir, keys=keys)
    return FsspecArtifactStore(url, options, cache_dir, keys=keys)
