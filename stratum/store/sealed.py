"""The artifact store's streaming paths through the cipher: sealing a local file into the
store, decrypting into a private cache file, checking an object end to end, and rewriting
one under the first key (``stratum artifacts encrypt``).

Every one of them moves a chunk at a time, so a multi-gigabyte object never sits in
memory; each publishes through the store's own atomic ``_commit``. A mixin of
``artifacts._Base``, apart so that module keeps to the store's protocol.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO

from stratum.errors import ConfigError, IntegrityError, NotFoundError
from stratum.security.artifact_keys import KeyRing
from stratum.security.encryption import (
    HEADER_SIZE,
    Sealer,
    Sink,
    plaintext_chunks,
    read_header,
    seal_stream,
)
from stratum.security.names import validate_artifact_path


class SealedAccess:
    url: str
    keys: KeyRing | None

    # Provided by the store implementation.
    def checksum(self, path: str) -> str:
        raise NotImplementedError

    def _open_raw(self, path: str) -> IO[bytes]:
        """The stored bytes as a stream (ciphertext if sealed); FileNotFoundError if none."""
        raise NotImplementedError

    def _cache_dir(self) -> Path:
        raise NotImplementedError

    def _tmp_dir(self) -> Path:
        raise NotImplementedError

    def _commit(self, path: str, local_path: Path) -> None:
        raise NotImplementedError

    def _commit_sealed(self, path: str, local_path: Path, keys: KeyRing) -> None:
        """Publish ``local_path`` sealed with the first key. A file from the staging
        folder is then removed, as the plain store would have moved it away."""
        fd, tmp = tempfile.mkstemp(dir=self._tmp_dir(), prefix=".seal-")
        try:
            with os.fdopen(fd, "wb") as out, open(local_path, "rb") as src:
                seal_stream(src, out, keys.primary)
            self._commit(path, Path(tmp))
        finally:
            Path(tmp).unlink(missing_ok=True)
        if local_path.parent == self._tmp_dir():  # staged plaintext should not linger
            local_path.unlink(missing_ok=True)

    def _pipe_plaintext(self, path: str, sink: Sink | None) -> str:
        """Feed the plaintext of ``path`` to ``sink`` (if any); return its SHA-256."""
        h = hashlib.sha256()
        try:
            with self._open_raw(path) as raw:
                for chunk in plaintext_chunks(raw, self.keys, path):
                    h.update(chunk)
                    if sink is not None:
                        sink.write(chunk)
        except FileNotFoundError as exc:
            raise NotFoundError(f"artifact {path} not found in {self.url}") from exc
        return h.hexdigest()

    def _materialize(self, path: str, *, verify: bool) -> Path:
        """The plaintext in a private cache file named by its digest (mkstemp: 0600).
        A copy that fails its checksum is never cached under that name."""
        digest = self.checksum(path)
        target = self._cache_dir() / digest
        if target.exists():
            return target
        fd, tmp = tempfile.mkstemp(dir=self._cache_dir(), prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                actual = self._pipe_plaintext(path, out)
            if actual != digest:
                if verify:
                    raise _mismatch(path, digest, actual)
                target = target.with_name(f"{digest}.unverified")
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return target

    def verify(self, path: str) -> str:
        """Read ``path`` through (decrypting it a chunk at a time) and check it against its
        sidecar; returns the digest, IntegrityError when it does not match."""
        validate_artifact_path(path)
        expected = self.checksum(path)
        actual = self._pipe_plaintext(path, None)
        if actual != expected:
            raise _mismatch(path, expected, actual)
        return actual

    def sealed_with(self, path: str) -> str | None:
        """The id of the key that sealed ``path``, or None if it is plaintext."""
        validate_artifact_path(path)
        try:
            with self._open_raw(path) as raw:
                header = read_header(raw.read(HEADER_SIZE), path)
        except FileNotFoundError as exc:
            raise NotFoundError(f"artifact {path} not found in {self.url}") from exc
        return header.key_id if header is not None else None

    def reseal(self, path: str) -> bool:
        """Rewrite ``path`` under the first key when it is plaintext or sealed with another
        key, atomically like any write; False when it already is under the first key.

        The plaintext must match the sidecar (which stays as it is), so a damaged object
        is never sealed as if it were good.
        """
        if self.keys is None:
            raise ConfigError("no artifact key is configured to encrypt with",
                              hint="make one with `stratum artifacts keygen PATH` and set "
                                   "artifact_key_files (STRATUM_ARTIFACT_KEY_FILES)")
        if self.sealed_with(path) == self.keys.primary.key_id:
            return False
        expected = self.checksum(path)
        fd, tmp = tempfile.mkstemp(dir=self._tmp_dir(), prefix=".seal-")
        try:
            with os.fdopen(fd, "wb") as out:
                sealer = Sealer(out, self.keys.primary)
                actual = self._pipe_plaintext(path, sealer)
                sealer.close()
                out.flush()
                os.fsync(out.fileno())
            if actual != expected:
                raise IntegrityError(f"artifact {path} does not match its checksum; it was "
                                     "not rewritten", hint="restore it from a replica or backup")
            self._commit(path, Path(tmp))
        finally:
            Path(tmp).unlink(missing_ok=True)
        return True


def _mismatch(path: str, expected: str, actual: str) -> IntegrityError:
    return IntegrityError(f"artifact {path} failed its checksum (expected {expected[:12]}…, "
                          f"got {actual[:12]}…)")


__all__ = ["SealedAccess"]
