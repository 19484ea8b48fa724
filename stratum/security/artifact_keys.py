"""Keys that encrypt artifacts at rest: made, stored in files, and held as a key ring.

A key is 32 random bytes (AES-256), kept base64 on one line of a 0600 file that only the
operator handles; nothing else stores it. Its id is public and derived from the key, so an
artifact's header can name the key it needs without a table of keys anywhere.

A ring is the ``artifact_key_files`` setting loaded: the first key encrypts, every key
decrypts. Rotation is putting a new key first and keeping the old ones after it until
``stratum artifacts encrypt`` has rewritten what they sealed.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "artifacts.key"
>>> kid = write_key_file(path)
>>> oct(path.stat().st_mode), load_keyring([path]).primary.key_id == kid
('0o100600', True)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stratum.errors import ConfigError, ConflictError

KEY_BYTES = 32
KEY_ID_BYTES = 8
# Domain separation: the id is a hash of the key that no other use of SHA-256 produces.
_ID_CONTEXT = b"stratum artifact key id\x00"

log = logging.getLogger(__name__)


def key_id_of(key: bytes) -> str:
    """The public id of ``key``: 16 hex characters, the same wherever the key is loaded."""
    return hashlib.sha256(_ID_CONTEXT + key).digest()[:KEY_ID_BYTES].hex()


@dataclass(frozen=True)
class ArtifactKey:
    """One key and where it came from; the secret never shows in a repr or a log."""

    secret: bytes = field(repr=False)
    source: str
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise ConfigError(f"artifact key {self.source} holds {len(self.secret)} bytes, "
                              f"not {KEY_BYTES}",
                              hint="make a key with `stratum artifacts keygen PATH`")
        object.__setattr__(self, "key_id", key_id_of(self.secret))


class KeyRing:
    """The configured keys: ``primary`` encrypts, ``find`` picks any of them by id."""

    def __init__(self, keys: Sequence[ArtifactKey]) -> None:
        if not keys:
            raise ConfigError("an artifact key ring needs at least one key")
        self.keys = list(keys)
        self._by_id = {k.key_id: k for k in reversed(self.keys)}

    @property
    def primary(self) -> ArtifactKey:
        return self.keys[0]

    @property
    def ids(self) -> list[str]:
        return [k.key_id for k in self.keys]

    def find(self, key_id: str, artifact: str) -> ArtifactKey:
        """The key with ``key_id``; ConfigError naming the id when it is not configured."""
        key = self._by_id.get(key_id)
        if key is None:
            raise missing_key(artifact, key_id, self.ids)
        return key


def missing_key(artifact: str, key_id: str, configured: Sequence[str]) -> ConfigError:
    have = ", ".join(configured) if configured else "none"
    return ConfigError(
        f"artifact {artifact} is encrypted with key {key_id}, which is not configured "
        f"(configured keys: {have})",
        hint=f"add the key file of key {key_id} to artifact_key_files "
             "(STRATUM_ARTIFACT_KEY_FILES); `stratum artifacts keygen` prints a key's id")


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def write_key_file(path: Path, key: bytes | None = None) -> str:
    """Write a new key (or ``key``) to ``path`` with mode 0600 and return its id.

    Never overwrites: a replaced key makes everything it sealed unreadable for good.
    """
    key = new_key() if key is None else key
    kid = ArtifactKey(key, str(path)).key_id
    path = Path(path).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConflictError(f"{path} already exists; an artifact key is never overwritten",
                            hint="choose another path, or delete the old file only once "
                                 "no artifact is sealed with its key") from exc
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by the umask
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return kid


def read_key_file(path: Path) -> ArtifactKey:
    """The key in ``path``; ConfigError naming the file when it is missing or malformed."""
    path = Path(path).expanduser()
    try:
        text = path.read_bytes().strip()
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError as exc:
        raise ConfigError(f"artifact key file {path} does not exist",
                          hint=f"make one with `stratum artifacts keygen {path}`") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read the artifact key file {path}: {exc}") from exc
    try:
        secret = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{path} does not hold a base64 artifact key",
                          hint="make one with `stratum artifacts keygen PATH`") from exc
    if mode & 0o077:
        # Warn rather than refuse: mounted secrets (Kubernetes) are often 0644 in a
        # private volume, and refusing would lock the data away.
        log.warning("artifact key file %s has mode %o: other users may read the key that "
                    "protects the artifacts; chmod 600 it", path, mode)
    return ArtifactKey(secret, str(path))


def load_keyring(paths: Sequence[Path]) -> KeyRing | None:
    """The ring of ``paths`` in order, or None when no key is configured (encryption off)."""
    return KeyRing([read_key_file(p) for p in paths]) if paths else None


__all__ = ["KEY_BYTES", "ArtifactKey", "KeyRing", "key_id_of", "load_keyring", "missing_key",
           "new_key", "read_key_file", "write_key_file"]
