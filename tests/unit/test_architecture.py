"""The architecture of DESIGN.md, checked: the import contract holds (and catches a planted
upward import, naming both modules), no module imports itself back through others, and
modules stay small unless a reason is written down here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import stratum.errors

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "stratum"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# Modules allowed past MAX_LINES, each with the reason it is one piece.
MAX_LINES = 350
LONG_MODULES: dict[str, str] = {
    "stratum/store/metadata.py": "one SQLAlchemy repository over every table; split by table "
                                 "it would scatter the transactions that span them",
}


def lint(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=cwd, capture_output=True, text=True, timeout=120,
        env={"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(cwd)},
    )


def test_import_contract_holds() -> None:
    out = lint(ROOT / "pyproject.toml", ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


def test_planted_upward_import_fails_naming_both_modules(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE, tmp_path / "stratum",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    # data sits below serve: importing the replica from the data layer is upward.
    (tmp_path / "stratum" / "data" / "planted.py").write_text(
        "from stratum.serve.batcher import Batcher\n")
    # and learning must not reach into serving, though both sit on one layer.
    (tmp_path / "stratum" / "online" / "planted.py").write_text(
        "import stratum.gateway.balancer\n")
    out = lint(tmp_path / "pyproject.toml", tmp_path)
    assert out.returncode != 0
    assert "BROKEN" in out.stdout
    assert "stratum.data.planted -> stratum.serve.batcher" in out.stdout, out.stdout
    assert "stratum.online.planted -> stratum.gateway.balancer" in out.stdout, out.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(
                        graph.find_modules_directly_imported_by(child)))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _without_package_reexports(graph: grimp.ImportGraph) -> grimp.ImportGraph:
    """A package's ``__init__`` re-exporting its own modules is its public face, not a
    cycle; imports of the package from elsewhere still count."""
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported.startswith(module + "."):
                graph.remove_import(importer=module, imported=imported)
    return graph


def test_no_import_cycles() -> None:
    # Imports under ``if TYPE_CHECKING:`` name a type for the checker and never run, so a
    # route module may annotate with the ``Replica`` that imports it; every import that
    # runs, at module level or inside a function, counts.
    graph = _without_package_reexports(grimp.build_graph(
        "stratum", cache_dir=None, exclude_type_checking_imports=True))
    cycles = _cycles(graph)
    assert not cycles, "import cycles (function-level imports count): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_modules_stay_small() -> None:
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if "/migrations/versions/" in rel:
            continue
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and rel not in LONG_MODULES:
            long[rel] = n
    assert not long, f"modules over {MAX_LINES} lines with no reason in LONG_MODULES: {long}"


@pytest.mark.parametrize("rel", sorted(LONG_MODULES))
def test_long_module_allowances_are_still_needed(rel: str) -> None:
    assert len((ROOT / rel).read_text().splitlines()) > MAX_LINES, \
        f"{rel} is short now; drop it from LONG_MODULES"


def _drawn(cls: type, depth: int = 0) -> list[str]:
    line = "    " * depth + f"{cls.__name__} ({cls.http_status})"  # type: ignore[attr-defined]
    kids = sorted((c for c in cls.__subclasses__() if c.__module__ == "stratum.errors"),
                  key=lambda c: c.__name__)
    return [line] + [row for kid in kids for row in _drawn(kid, depth + 1)]


def test_error_tree_is_drawn_truly_and_errors_live_in_one_module() -> None:
    doc = stratum.errors.__doc__ or ""
    # The docstring's box drawing, reduced to indentation by depth.
    drawn = [line.replace("│   ", "    ").replace("├── ", "    ").replace("└── ", "    ")[4:]
             for line in doc.splitlines() if line.startswith("    ") and "Error (" in line]
    assert drawn == _drawn(stratum.errors.StratumError)
    stray = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            bases = line.partition("(")[2].partition(")")[0].replace(" ", "").split(",")
            if (line.startswith("class ") and path.name != "errors.py"
                    and set(bases) & set(stratum.errors.__all__)):
                stray.append(f"{path.relative_to(ROOT)}:{n}")
    assert not stray, f"error classes outside stratum/errors.py: {stray}"
