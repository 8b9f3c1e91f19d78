"""No private attribute or helper of another library anywhere in the project (issue 19).

A private name (`_x`) of a third-party library can change in any minor release without
notice, and the code that reached into it breaks silently. This test reads the project's
source with `ast` and fails on:

- `obj._name` where `_name` is defined nowhere in the project (so it can only be another
  library's attribute), or where `obj` is an imported third-party module;
- `from package import _name` and `import package._private` for third-party packages;
- the helpers named in DENIED, which are public by spelling but internal by contract
  (SQLAlchemy's greenlet bridge).

Dunder names (`__table__`, `__name__`) are Python's protocol, not private, and pass.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("bot", "adapters", "backends", "bench", "migrations", "tests")
OURS = {"bot", "adapters", "backends", "bench", "migrations", "tests"}
# Internal helpers with public-looking names: importing them is reaching into internals.
DENIED = {
    ("sqlalchemy.util", "await_only"),
    ("sqlalchemy.util", "greenlet_spawn"),
    ("sqlalchemy.util._concurrency_py3k", "await_only"),
    ("sqlalchemy.util.concurrency", "await_only"),
    ("sqlalchemy.util.concurrency", "greenlet_spawn"),
}
# Private by spelling, public by contract: documented functions of the standard library.
ALLOWED = {
    ("os", "_exit"),  # "Exit the process with status n, without calling cleanup handlers"
}


def _files() -> list[Path]:
    return sorted(p for d in SOURCES for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined(tree: ast.AST) -> Iterator[str]:
    """Every private name a module defines: functions, classes, module and class variables,
    attributes assigned (`self._x = ...`, `obj._x = ...`), parameters and keywords."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del):
            yield node.attr
        elif isinstance(node, ast.arg):
            yield node.arg
        elif isinstance(node, ast.alias):
            yield (node.asname or node.name).split(".")[0]


def _third_party(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] not in OURS  # type: ignore[union-attr]


def _imported_modules(tree: ast.AST) -> dict[str, str]:
    """Local name -> third-party module, for `import x` / `import x as y` / `from a import b`
    where b may be a module (checked by name only)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _third_party(alias.name):
                    names[alias.asname or alias.name.split(".")[0]] = alias.name
    return names


def _violations(text: str, where: str, ours: set[str]) -> Iterator[str]:
    tree = ast.parse(text, where)
    modules = _imported_modules(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and _third_party(node.module):
            module = node.module or ""
            if any(_private(part) for part in module.split(".")):
                yield f"{where}:{node.lineno}: from {module} import (a private module)"
            for alias in node.names:
                if _private(alias.name) or (module, alias.name) in DENIED:
                    yield f"{where}:{node.lineno}: from {module} import {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if _third_party(alias.name) and any(_private(p) for p in parts):
                    yield f"{where}:{node.lineno}: import {alias.name}"
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in modules:
                if (modules[base.id], node.attr) in ALLOWED:
                    continue
                yield f"{where}:{node.lineno}: {base.id}.{node.attr} (module {modules[base.id]})"
            elif node.attr not in ours:
                yield f"{where}:{node.lineno}: .{node.attr} (defined nowhere in the project)"


def test_no_private_attribute_or_helper_of_another_library() -> None:
    files = _files()
    ours: set[str] = set()
    for path in files:
        ours.update(n for n in _defined(ast.parse(path.read_text(), str(path))) if _private(n))
    found = [
        v
        for path in files
        for v in _violations(path.read_text(), str(path.relative_to(ROOT)), ours)
    ]
    assert not found, "private APIs of other libraries:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio\nlock = asyncio.Lock()\nlock._waiters\n", "_waiters"),
        ("import sqlalchemy\nsqlalchemy._x\n", "module sqlalchemy"),
        ("from sqlalchemy.util import greenlet_spawn\n", "greenlet_spawn"),
        ("from httpx._config import Limits\n", "private module"),
        ("import os\nos._exit(3)\n", None),  # documented: allowed
        ("import os\nos._wrap_close\n", "module os"),
        ("class A:\n    def __init__(self):\n        self._x = 1\n    def f(self):\n"
         "        return self._x\n", None),
    ],
)  # fmt: skip
def test_the_check_finds_what_it_should(source: str, expected: str | None) -> None:
    """The checker itself: each kind of reach is found, our own private names pass."""
    ours = {n for n in _defined(ast.parse(source)) if _private(n)}
    found = list(_violations(source, "probe.py", ours))
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found
