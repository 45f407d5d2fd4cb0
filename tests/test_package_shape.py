"""The package's shape: rooms that show the layers, small modules, no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tune_archiver"
MAX_LINES = 400
# Third-party libraries and the rooms that may import them (their types stay inside).
CONFINED = {
    "aiohttp": ("astria", "net", "download", "store.s3", "web"),
    "aiobotocore": ("store.s3",),
    "botocore": ("store.s3",),
    "tenacity": ("net.retry",),
    "tqdm": ("progress", "bar"),
}


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name below tune_archiver."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (type-checking and deferred ones too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def internal_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a parent package it lives in excluded)."""
    names = modules()
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        targets = set()
        for imported in imports(path):
            if imported.startswith("tune_archiver."):
                target = imported.removeprefix("tune_archiver.")
                if target in names and not name.startswith(f"{target}."):
                    targets.add(target)
        graph[name] = targets - {name}
    return graph


def test_no_module_is_over_the_size_limit() -> None:
    """Every module stays under MAX_LINES lines: past that it has taken a second job."""
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def cycles_in(graph: dict[str, set[str]]) -> list[str]:
    """Each cycle found by walking the graph from every node, as "a -> b -> a"."""
    found = []

    def visit(name: str, path: list[str], done: set[str]) -> None:
        for target in sorted(graph[name]):
            if target in path:
                found.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in done:
                done.add(target)
                visit(target, [*path, target], done)

    for name in graph:
        visit(name, [name], set())
    return found


def test_there_is_no_import_cycle() -> None:
    """No module reaches itself through imports, counting type-checking and deferred ones."""
    assert cycles_in(internal_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    """A graph made with a cycle is caught, so an empty answer above means something."""
    assert cycles_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()})


def test_third_party_libraries_stay_in_their_rooms() -> None:
    """aiohttp, aiobotocore, botocore, tenacity and tqdm are imported only where allowed."""
    strays = []
    for name, path in modules().items():
        for imported in imports(path):
            library = imported.split(".")[0]
            allowed = CONFINED.get(library)
            if allowed and not any(name == room or name.startswith(f"{room}.")
                                   for room in allowed):
                strays.append(f"{name} imports {library}")
    assert strays == []


def test_every_module_opens_with_its_job() -> None:
    """Each module starts with a docstring naming its job."""
    missing = [name for name, path in modules().items()
               if not ast.get_docstring(ast.parse(path.read_text()))]
    assert missing == []
