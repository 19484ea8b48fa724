"""Security primitives: name validation, API keys and scopes, PII masking."""

from stratum.security.keys import SCOPES, generate_key, hash_key, verify_key
from stratum.security.names import validate_artifact_path, validate_name

__all__ = [
    "SCOPES",
    "generate_key",
    "hash_key",
    "validate_artifact_path",
    "validate_name",
    "verify_key",
]
