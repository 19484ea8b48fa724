"""PII masking by feature name, applied before request inputs are logged.

Inputs come in the shapes our HTTP routes accept: a row ``{"age": 41, ...}``, columns
``{"age": [41, 37]}``, a list of rows, an OIP v2 tensor list
``[{"name": "age", "data": [...]}, ...]``, or positional rows when ``feature_names`` say
which position is which — as nested lists or as one NumPy array (the replica captures an
OIP request's single input tensor, JSON or binary, as the array itself). Every value under
a PII name is replaced, recursively. A model with one feature takes a list of plain values
as one value per row.

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
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 41 in JSON and 41.0 from an FP32 tensor mask alike
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
    names = list(feature_names or ())
    positions = [i for i, n in enumerate(names) if n in pii]
    # One feature, and it is PII: any plain value in a row list is that feature.
    every = len(names) == 1 and bool(positions)
    return _mask(inputs, pii, positions, key, every)


def _mask(obj: Any, pii: frozenset[str], positions: list[int], key: bytes | None,
          every: bool = False) -> Any:
    if not isinstance(obj, Mapping | list | tuple | str | bytes) and hasattr(obj, "tolist"):
        obj = obj.tolist()  # an array: its rows as lists (masked values are strings)
    if isinstance(obj, Mapping):
        # An OIP v2 tensor: {"name": "age", "shape": [...], "data": [...]}.
        if obj.get("name") in pii and "data" in obj:
            return {**obj, "data": mask_value(obj["data"], key)}
        return {
            k: mask_value(v, key) if k in pii else _mask(v, pii, positions, key, every)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        if positions and obj and not isinstance(obj[0], list | tuple | Mapping):
            # A positional row: mask by feature position.
            return [mask_value(v, key) if every or i in positions else v
                    for i, v in enumerate(obj)]
        return [_mask(v, pii, positions, key, every) for v in obj]
    return obj
