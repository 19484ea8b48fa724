"""Credentials kept in files of the home (the admin token made on first start, the client
key ``stratum up`` makes for predict and feedback) and the deployment secret replicas check.

Such a key is an ordinary API key (``keys.generate_key``): its hash goes to the metadata
store like any other, and the plain key only to a 0600 file, so ``cat`` of that file is
the one way to learn it. Every process that needs one calls ``ensure_key_file`` at start;
it is idempotent, and processes or threads that race are serialised by an exclusive
``flock`` beside the file, so they all end with the same key and one stored hash.

>>> import tempfile, pathlib
>>> class Keys(dict):
...     def api_key(self, key_id): return self.get(key_id)
...     def add_api_key(self, key_id, name, key_hash, scopes): self[key_id] = (key_hash, scopes)
>>> home = pathlib.Path(tempfile.mkdtemp())
>>> first = ensure_admin_token(home, Keys())
>>> first == (home / "admin.token").read_text().strip() == ensure_admin_token(home, Keys())
True
>>> oct((home / "admin.token").stat().st_mode)
'0o100600'
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from stratum.errors import ConfigError
from stratum.security.keys import generate_key, hash_key, key_id_of, verify_key

ADMIN_TOKEN_FILE = "admin.token"
ADMIN_KEY_NAME = "admin-token"
# The per-deployment secret: handed to a replica in its environment (never argv, which
# `ps` shows), to its gateway in the routes; sent by both in this header.
REPLICA_SECRET_ENV = "STRATUM_REPLICA_SECRET"
REPLICA_SECRET_HEADER = "x-stratum-replica-secret"


# What a secret may be: it is written into a request head, so no spaces, CR or LF.
REPLICA_SECRET_PATTERN = r"^[A-Za-z0-9._~+/=-]{16,256}$"


def replica_secret() -> str:
    """A fresh deployment secret: 256 random bits, URL-safe (a valid header value)."""
    return secrets.token_urlsafe(32)


def check_replica_secret(secret: str) -> str:
    """``secret`` if it can be one; ConfigError otherwise."""
    if not re.match(REPLICA_SECRET_PATTERN, secret):
        raise ConfigError("a replica secret is 16-256 letters, digits or '._~+/=-'",
                          hint="make one with `python -c 'import secrets; "
                               "print(secrets.token_urlsafe(32))'`")
    return secret


class KeyStore(Protocol):
    """What of the metadata store a key file needs (``MetadataStore`` satisfies it)."""

    def api_key(self, key_id: str) -> Any: ...
    def add_api_key(self, key_id: str, name: str, key_hash: str,
                    scopes: list[str]) -> Any: ...


def ensure_admin_token(home: Path, keys: KeyStore) -> str:
    """The admin token of ``home``: read from ``home/admin.token``, or made (and its hash
    stored) on first start."""
    return ensure_key_file(Path(home).expanduser() / ADMIN_TOKEN_FILE, keys,
                           ADMIN_KEY_NAME, ["admin"])


def ensure_key_file(path: Path, keys: KeyStore, name: str, scopes: Sequence[str]) -> str:
    """Return the key in ``path``, making it first when there is none (or the one there
    was revoked); its hash is stored under ``name`` with ``scopes`` if it is not yet.

    A key file copied into a home whose database does not know it is registered there:
    the file, readable only by its owner, is the credential.
    """
    path = path.resolve()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        key = _read(path)
        row = keys.api_key(key_id_of(key) or "") if key else None
        if key is None or (row is not None and row.revoked_at is not None):
            key, _ = generate_key()
            _write_private(path, key)
            row = None
        if row is None:
            keys.add_api_key(key_id_of(key) or "", name, hash_key(key), sorted(scopes))
        elif not verify_key(key, row.key_hash):
            raise ConfigError(f"the key in {path} does not match the stored key "
                              f"{row.key_id}",
                              hint=f"delete {path} and start again to make a new one")
    return key


def _read(path: Path) -> str | None:
    try:
        key = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc}") from exc
    if key_id_of(key) is None:
        raise ConfigError(f"{path} does not hold a Stratum key",
                          hint="delete it and start again to make a new one")
    return key


def _write_private(path: Path, key: str) -> None:
    """Write ``key`` to ``path`` with mode 0600 whatever the umask, atomically: a reader
    sees the old file or the whole new one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash; we hold the lock
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by the umask
        os.write(fd, key.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


__all__ = ["ADMIN_KEY_NAME", "ADMIN_TOKEN_FILE", "REPLICA_SECRET_ENV", "REPLICA_SECRET_HEADER",
           "REPLICA_SECRET_PATTERN", "KeyStore", "check_replica_secret", "ensure_admin_token",
           "ensure_key_file", "replica_secret"]
