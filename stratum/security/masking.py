"""PII masking by feature name, applied before request inputs are logged.

Inputs come in the shapes our HTTP routes accept: a row ``{"age": 41, ...}``, columns
``{"age": [41, 37]}``, a list of rows, an OIP v2 tensor list
``[{"name": "age", "data": [...]}, ...]``, or positional rows when ``feature_names`` say
which position is which. Every value under a PII name is replaced, recursively.

With a ``key``, a value becomes ``"masked:<hmac>"`` (HMAC-SHA256, 16 hex chars): the
same value masks the same way, so counts and joins still work, but it cannot be reversed
by hashing guesses without the key. Without a key it becomes ``"***"``.

>>> mask({"name": "Ada", "age": 36}, ["name"])
{'name': '***', 'age': 36}
>>> mask([[1, "Ada"], [2, "Bob"]], ["name"], feature_names=["id", "name"])
[[1, '***'], [2, '***']]
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Mapping, Sequence
from typing import Any

REDACTED = "***"


def mask_value(value: Any, key: bytes | None = None) -> Any:
    """Mask one scalar, or each element of a list of them."""
    if isinstance(value, list | tuple):
        return [mask_value(v, key) for v in value]
    if value is None:
        return None
    if key is None:
        return REDACTED
    digest = hmac.new(key, repr(value).encode(), hashlib.sha256).hexdigest()[:16]
    return f"masked:{digest}"


def mask(
    inputs: Any, pii: Collection[str], *, feature_names: Sequence[str] | None = None,
    key: bytes | None = None,
) -> Any:
    """Return a copy of ``inputs`` with every value of a ``pii`` feature masked."""
    pii = frozenset(pii)
    if not pii:
        return inputs
    positions = [i for i, n in enumerate(feature_names or ()) if n in pii]
    return _mask(inputs, pii, positions, key)


def _mask(obj: Any, pii: frozenset[str], positions: list[int], key: bytes | None) -> Any:
    if isinstance(obj, Mapping):
        # An OIP v2 tensor: {"name": "age", "shape": [...], "data": [...]}.
        if obj.get("name") in pii and "data" in obj:
            return {**obj, "data": mask_value(obj["data"], key)}
        return {
            k: mask_value(v, key) if k in pii else _mask(v, pii, positions, key)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        if positions and obj and not isinstance(obj[0], list | tuple | Mapping):
            # A positional row: mask by feature position.
            return [mask_value(v, key) if i in positions else v for i, v in enumerate(obj)]
        return [_mask(v, pii, positions, key) for v in obj]
    return obj
