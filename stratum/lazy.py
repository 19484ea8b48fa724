"""Package attributes imported on first use, so that importing a package stays cheap.

A package's ``__init__`` maps each public name to the module that defines it and sets
``__getattr__ = lazy_exports(__name__, {...})``; the names stay importable as before
(``from stratum.models import build_model``), but their modules, and the torch or pyarrow
they bring, load only when a caller asks for one. Names also imported under
``if TYPE_CHECKING:`` keep the type checker seeing them.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any


class _Package(types.ModuleType):
    """A package whose exported name equals one of its submodules' (``stratum.train.fit``
    defines ``fit``). Importing the submodule makes the import system bind the submodule
    over the package's attribute of that name, and ``from stratum.train import fit`` would
    then hand out the module: the eager ``from .fit import fit`` used to rebind it. This
    binds the exported object instead, as the eager import did."""

    def __setattr__(self, name: str, value: Any) -> None:
        lazy: Mapping[str, str] = self.__dict__.get("__lazy_exports__", {})
        if isinstance(value, types.ModuleType) and lazy.get(name) == value.__name__ \
                and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``names[name]`` on demand."""
    module = sys.modules[package]
    module.__dict__["__lazy_exports__"] = dict(names)
    module.__class__ = _Package

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            # Also the path ``from package import submodule`` takes before importing it.
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return __getattr__
