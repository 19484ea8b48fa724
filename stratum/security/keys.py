"""API keys: shown once, stored only as a salted hash, carrying scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets

SCOPES = ("predict", "feedback", "admin")
_PREFIX = "sk_"


def generate_key() -> tuple[str, str]:
    """Return ``(key, key_id)``; the key is shown to the user once, the id is public."""
    key_id = secrets.token_hex(6)
    return f"{_PREFIX}{key_id}_{secrets.token_urlsafe(32)}", key_id


def key_id_of(key: str) -> str | None:
    parts = key.split("_")
    if len(parts) < 3 or not key.startswith(_PREFIX):
        return None
    return parts[1]


def hash_key(key: str, salt: bytes | None = None) -> str:
    """PBKDF2 is unnecessary for 256-bit random keys; a salted SHA-256 resists lookup."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.sha256(salt + key.encode()).hexdigest()
    return f"sha256${salt.hex()}${digest}"


def verify_key(key: str, stored: str) -> bool:
    try:
        algo, salt_hex, _ = stored.split("$")
    except ValueError:
        return False
    if algo != "sha256":
        return False
    return hmac.compare_digest(hash_key(key, bytes.fromhex(salt_hex)), stored)
