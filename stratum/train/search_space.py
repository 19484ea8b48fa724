"""A search space: which config keys a search varies, and over what.

Space file: ``dotted.key: spec``, where spec is ``{float: [low, high]}``, ``{int: [low,
high]}`` (either with ``log: true``, ``int`` with ``step``), or ``{choice: [a, b, ...]}``
(any YAML values, lists included)::

    optimizer.lr: {float: [0.0003, 0.01], log: true}
    model.params.hidden: {choice: [[128], [256, 128]]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stratum.errors import ConfigError


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # float | int | choice
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: int | None = None
    choices: tuple[str, ...] = ()  # JSON of each choice: Optuna keeps only scalars

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high),
                                     step=self.step or 1, log=self.log)
        return json.loads(trial.suggest_categorical(self.key, list(self.choices)))


def parse_space(doc: Any, where: str = "the search space") -> list[Param]:
    """The space's parameters; an empty or malformed space is a ConfigError."""
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{where} is empty: nothing to search",
                          hint="give at least one key, e.g. optimizer.lr: "
                               "{float: [0.0001, 0.01], log: true}")
    out = []
    for key, spec in doc.items():
        kinds = [k for k in ("float", "int", "choice") if isinstance(spec, dict) and k in spec]
        if len(kinds) != 1:
            raise ConfigError(f"{where}: {key} needs exactly one of float: [low, high], "
                              "int: [low, high] or choice: [...]")
        kind, value = kinds[0], spec[kinds[0]]
        if kind == "choice":
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{where}: {key}: choice needs a non-empty list")
            out.append(Param(key, kind, choices=tuple(json.dumps(v) for v in value)))
            continue
        if not (isinstance(value, list) and len(value) == 2 and value[0] < value[1]):
            raise ConfigError(f"{where}: {key}: {kind} needs [low, high] with low < high")
        out.append(Param(key, kind, float(value[0]), float(value[1]),
                         log=bool(spec.get("log", False)), step=spec.get("step")))
    return out


def load_space(path: str | Path) -> list[Param]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space {p} does not exist")
    try:
        return parse_space(yaml.safe_load(p.read_text(encoding="utf-8")), f"search space {p}")
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {p} is not valid YAML: {exc}") from exc


def set_key(doc: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    for part in path:
        doc = doc.setdefault(part, {})
        if not isinstance(doc, dict):
            raise ConfigError(f"search space key {key}: {part} is not a section")
    doc[last] = value


def get_key(doc: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def as_param(p: Param, value: Any) -> Any:
    """``value`` as Optuna would hold it for ``p``; None when it is not in the space."""
    if value is None:
        return None
    if p.kind == "choice":
        return json.dumps(value) if json.dumps(value) in p.choices else None
    return value if p.low <= value <= p.high else None


