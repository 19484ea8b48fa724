"""A setting that is a list of files, given as YAML/JSON lists or one comma-separated
environment variable.

>>> from pydantic import TypeAdapter
>>> [p.name for p in TypeAdapter(PathList).validate_python("a.key, b.key")]
['a.key', 'b.key']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator
from pydantic_settings import NoDecode


def _split(value: Any) -> Any:
    # An env var is one string: a JSON list, or paths separated by commas.
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _absolute(paths: list[Path]) -> list[Path]:
    # Children start in / (config/child.py): a relative path means the folder the command
    # was typed in, so it is fixed where that folder is known.
    return [p.expanduser().resolve() for p in paths]


# NoDecode: pydantic-settings would otherwise demand JSON from the environment variable.
PathList = Annotated[list[Path], NoDecode, BeforeValidator(_split), AfterValidator(_absolute)]

__all__ = ["PathList"]
