"""Security primitives: name validation, API keys and scopes, key files, the private home,
PII masking."""

from stratum.security.home import private_home
from stratum.security.keys import SCOPES, generate_key, hash_key, verify_key
from stratum.security.names import validate_artifact_path, validate_name
from stratum.security.tokens import ensure_admin_token, ensure_key_file

__all__ = [
    "SCOPES",
    "ensure_admin_token",
    "ensure_key_file",
    "generate_key",
    "hash_key",
    "private_home",
    "validate_artifact_path",
    "validate_name",
    "verify_key",
]
