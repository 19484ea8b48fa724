"""Validation of user-given names and artifact paths (no traversal, no absolute paths)."""

from __future__ import annotations

import re

from stratum.errors import InvalidNameError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._=-]{0,254}$")


def validate_name(name: str, what: str = "name") -> str:
    """Check a dataset/model/alias/deployment name: letters, digits, ``._-``, ≤128 chars.

    >>> validate_name("mnist-v2")
    'mnist-v2'
    """
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise InvalidNameError(
            f"invalid {what} {name!r}",
            hint="use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def validate_artifact_path(path: str) -> str:
    """Check a relative artifact path: '/'-separated safe segments, no '..', not absolute.

    >>> validate_artifact_path("datasets/mnist/abc/shard-0.parquet")
    'datasets/mnist/abc/shard-0.parquet'
    """
    if not isinstance(path, str) or not path or path.startswith(("/", "\\")) or "\\" in path:
        raise InvalidNameError(f"invalid artifact path {path!r}", hint="use a relative path")
    for segment in path.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.match(segment):
            raise InvalidNameError(
                f"invalid artifact path {path!r}: bad segment {segment!r}",
                hint="segments are letters, digits, '._=-'; no '..' and no empty segments",
            )
    return path
