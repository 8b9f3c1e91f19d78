"""No private attribute or helper of another library anywhere in the project (issue 19).

A private name (`_x`) of a third-party library can change in any minor release without
notice, and the code that reached into it breaks silently. This test reads the project's
source with `ast` and fails on:

- `self._name` (or `cls.`, `super().`) where `_name` is no member of a project class, or,
  in a class with a third-party base, no member of that class itself (a subclass of
  aiosqlite's Connection reading `self._thread` reads the library's attribute);
- `obj._name` on any other object, unless that file's use of `_name` was reviewed and
  listed in CROSS_OBJECT (one of our own objects: the name must also be a member of a
  project class). The type of `obj` is not known here, so a name we also use is no excuse:
  `lock._waiters` fails though `_waiters` is an attribute of ours elsewhere;
- `module._name` of an imported third-party module;
- a private name as a string: `getattr(x, "_y")`, `setattr`, `hasattr`, `delattr`,
  `operator.attrgetter("_y")`, `monkeypatch.setattr(x, "_y", ...)`, `vars(x)["_y"]`,
  `x.__dict__["_y"]`;
- `from package import _name` and `import package._private` for third-party packages;
- the helpers named in DENIED, which are public by spelling but internal by contract
  (SQLAlchemy's greenlet bridge).

Dunder names (`__table__`, `__name__`) are Python's protocol, not private, and pass.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    ("sys", "_current_frames"),  # documented: each thread's topmost frame, for debugging
}
# Private names read on an object other than `self`, reviewed: each is one of our own
# objects (a class's partner or twin, a test reading the object it built). Add a line only
# after checking that the object is ours.
CROSS_OBJECT = {
    ("bot/budget.py", "budgets", "_close"),  # Budgets, the partner class in the same module
    ("bot/knowledge/index.py", "vocabulary", "_deletions"),  # Vocabulary, same module
    # MemoryCache, wrapped by its own read-through layer
    ("bot/storage/cache.py", "self._cache", "_find"),
    ("bot/storage/cache.py", "self._cache", "_keep_absent"),
    ("bot/storage/cache.py", "self._cache", "_keep"),
    ("backends/breaker.py", "self._breaker", "_broke_after_success"),  # CircuitBreaker
    ("backends/breaker.py", "self._breaker", "_resolve"),
    ("backends/vllm_engine.py", "twin", "_capabilities"),  # VllmEngine's twin sharing the engine
    ("backends/vllm_engine.py", "twin", "_engine"),
    ("backends/vllm_engine.py", "twin", "_encoder"),
    ("tests/test_backend_vllm.py", "failing", "_engine"),  # our VllmEngine
    ("tests/test_conversation.py", "app.manager", "_context"),  # our ConversationManager
    ("tests/test_conversation_redis.py", "app.manager", "_context"),
    ("tests/test_storage_contract.py", "store", "_take_lease"),  # our SqlStore
    ("tests/test_telegram.py", "adapter", "_poll"),  # our TelegramAdapter
    ("tests/test_telegram_groups.py", "adapter", "_poll"),
    ("tests/test_telegram_webhook.py", "app.store", "_engine"),  # our SqlStore
    ("tests/test_backend_suite.py", "backend.inner", "_base_url"),  # our OpenAI backend
}
# Bases from the standard library's typing and enum modules hold no private state of theirs.
_NEUTRAL_BASES = {"Generic", "Protocol", "Enum", "StrEnum", "IntEnum", "NamedTuple", "TypedDict"}
_BY_STRING = {
    "getattr", "setattr", "hasattr", "delattr", "attrgetter", "__getattribute__", "__setattr__"
}  # fmt: skip


def _files() -> list[Path]:
    return sorted(p for d in SOURCES for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _third_party(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] not in OURS  # type: ignore[union-attr]


def _members(node: ast.ClassDef) -> set[str]:
    """A class's own private members: methods, class variables, `self._x = ...`."""
    names: set[str] = set()
    for item in node.body:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(item.name)
        elif isinstance(item, ast.Assign | ast.AnnAssign):
            targets = item.targets if isinstance(item, ast.Assign) else [item.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    for sub in ast.walk(node):
        if (
            isinstance(sub, ast.Attribute)
            and isinstance(sub.ctx, ast.Store | ast.Del)
            and isinstance(sub.value, ast.Name)
            and sub.value.id in ("self", "cls")
        ):
            names.add(sub.attr)
    return {n for n in names if _private(n)}


@functools.cache
def project_members() -> frozenset[str]:
    """Every private member of a class of the project."""
    names: set[str] = set()
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                names |= _members(node)
    return frozenset(names)


@dataclass
class _Imports:
    modules: dict[str, str] = field(default_factory=dict)  # local name -> third-party module
    names: dict[str, str] = field(default_factory=dict)  # name -> its third-party module
    ours: set[str] = field(default_factory=set)  # modules and names imported from the project


def _imports(tree: ast.AST) -> _Imports:
    found = _Imports()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _third_party(alias.name):
                    found.modules[alias.asname or alias.name.split(".")[0]] = alias.name
            for alias in node.names:
                if not _third_party(alias.name):
                    found.ours.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            local = {alias.asname or alias.name: alias.name for alias in node.names}
            if node.level == 0 and _third_party(node.module):
                found.names |= {n: f"{node.module}:{real}" for n, real in local.items()}
            else:
                found.ours |= set(local)
    return found


def _foreign_base(node: ast.ClassDef, imported: _Imports) -> bool:
    """Whether a base of the class comes from a third-party module."""
    for base in node.bases:
        while isinstance(base, ast.Subscript):  # Generic[...], Protocol[...]
            base = base.value
        if isinstance(base, ast.Name) and base.id in imported.names.keys() - _NEUTRAL_BASES:
            return True
        if (
            isinstance(base, ast.Attribute)
            and isinstance(base.value, ast.Name)
            and base.value.id in imported.modules
        ):
            return True
    return False


def _library_names(node: ast.ClassDef, imported: _Imports) -> frozenset[str]:
    """The private names the class's third-party bases define: class members along their
    MRO, and attributes their methods assign (`self._x = ...` in their source). Reading or
    writing one of them from the subclass is reaching into the library."""
    names: set[str] = set()
    for base in node.bases:
        while isinstance(base, ast.Subscript):
            base = base.value
        found = _resolve(base, imported)
        for klass in getattr(found, "__mro__", ()):
            if klass is object or klass.__module__.split(".")[0] in OURS:
                continue
            names.update(n for n in vars(klass) if _private(n))
            try:
                source = inspect.getsource(klass)
            except (OSError, TypeError):  # a class written in C
                continue
            names.update(n for n in _SELF_ASSIGNED.findall(source) if _private(n))
    return frozenset(names)


_SELF_ASSIGNED = re.compile(r"self\.(_\w+)\s*(?::[^=\n]+)?=(?!=)")


def _resolve(base: ast.expr, imported: _Imports) -> object:
    """The class a base expression names, imported; None when it cannot be."""
    try:
        if isinstance(base, ast.Name) and base.id in imported.names:
            module, name = imported.names[base.id].split(":")
            return getattr(importlib.import_module(module), name)
        if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name):
            dotted = imported.modules.get(base.value.id)
            return getattr(importlib.import_module(dotted), base.attr) if dotted else None
    except (ImportError, AttributeError):
        return None
    return None


def _on_self(base: ast.expr) -> bool:
    if isinstance(base, ast.Name):
        return base.id in ("self", "cls")
    return (
        isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super"
    )


def _string_reach(node: ast.Call) -> str | None:
    """The private name a call reaches by string: getattr(x, "_y"), attrgetter("_y"),
    monkeypatch.setattr(x, "_y", v)."""
    func = node.func
    name = (
        func.id
        if isinstance(func, ast.Name)
        else func.attr
        if isinstance(func, ast.Attribute)
        else ""
    )
    if name not in _BY_STRING:
        return None
    for arg in node.args[:2]:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _private(arg.value):
            return arg.value
    return None


def _subscript_reach(node: ast.Subscript) -> str | None:
    """vars(x)["_y"], x.__dict__["_y"]."""
    key, value = node.slice, node.value
    if not (isinstance(key, ast.Constant) and isinstance(key.value, str) and _private(key.value)):
        return None
    if isinstance(value, ast.Attribute) and value.attr == "__dict__":
        return key.value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "vars":
        return key.value
    return None


def _violations(text: str, where: str, members: frozenset[str]) -> Iterator[str]:
    tree = ast.parse(text, where)
    imported = _imports(tree)
    # id of a node in a class with a third-party base -> (the class's own private members,
    # the private names its bases define)
    own: dict[int, tuple[set[str], frozenset[str]]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and _foreign_base(node, imported):
            names = (_members(node), _library_names(node, imported))
            for sub in ast.walk(node):
                own[id(sub)] = names
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
            yield from _attribute(node, where, members, imported, own)
        elif isinstance(node, ast.Call) and (name := _string_reach(node)) is not None:
            receiver = ast.unparse(node.args[0]) if node.args else ""
            if (where, receiver, name) not in CROSS_OBJECT:
                yield f"{where}:{node.lineno}: {name!r} by string"
        elif isinstance(node, ast.Subscript) and (name := _subscript_reach(node)) is not None:
            yield f"{where}:{node.lineno}: {name!r} through the instance's __dict__"


def _attribute(
    node: ast.Attribute,
    where: str,
    members: frozenset[str],
    imported: _Imports,
    own: dict[int, tuple[set[str], frozenset[str]]],
) -> Iterator[str]:
    base, name = node.value, node.attr
    if isinstance(base, ast.Name) and base.id in imported.modules:
        if (imported.modules[base.id], name) not in ALLOWED:
            yield f"{where}:{node.lineno}: {base.id}.{name} (module {imported.modules[base.id]})"
    elif isinstance(base, ast.Name) and base.id in imported.ours:
        return  # a module or class of the project: `sites._site`, `DiscordAdapter._client`
    elif _on_self(base):
        mine, theirs = own.get(id(node), (None, frozenset()))
        if name in theirs:
            yield f"{where}:{node.lineno}: self.{name} (a private name of its library base)"
        elif mine is not None and name not in mine:
            yield f"{where}:{node.lineno}: self.{name} (not a member of this class: its base's)"
        elif name not in members:
            yield f"{where}:{node.lineno}: self.{name} (a member of no class of the project)"
    elif isinstance(node.ctx, ast.Load) and (where, ast.unparse(base), name) not in CROSS_OBJECT:
        yield f"{where}:{node.lineno}: {ast.unparse(node)} (another object's private name)"
    elif name not in members:
        yield f"{where}:{node.lineno}: {ast.unparse(node)} (a member of no class of the project)"


def test_no_private_attribute_or_helper_of_another_library() -> None:
    files = _files()
    members = project_members()
    found = [
        v
        for path in files
        for v in _violations(path.read_text(), str(path.relative_to(ROOT)), members)
    ]
    assert not found, "private APIs of other libraries:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio\nlock = asyncio.Lock()\nlock._waiters\n", "_waiters"),
        # a name of ours elsewhere is no excuse on another object
        ("class Mine:\n    def __init__(self):\n        self._waiters = []\n"
         "def f(lock):\n    return lock._waiters\n", "another object"),
        ("def f(connection):\n    return connection._thread\n", "another object"),
        ("def f(exc):\n    exc._retry_after = 3\n", "a member of no class"),
        ("import sqlalchemy\nsqlalchemy._x\n", "module sqlalchemy"),
        ("from sqlalchemy.util import greenlet_spawn\n", "greenlet_spawn"),
        ("from httpx._config import Limits\n", "private module"),
        ("import os\nos._exit(3)\n", None),  # documented: allowed
        ("import os\nos._wrap_close\n", "module os"),
        ("class A:\n    def __init__(self):\n        self._x = 1\n    def f(self):\n"
         "        return self._x\n", None),
        # a subclass of a library's class reading the library's attribute
        ("from aiosqlite import Connection\nclass C(Connection):\n    def f(self):\n"
         "        return self._thread\n", "library base"),
        # writing it, or assigning it first, is reaching in too
        ("from aiosqlite import Connection\nclass C(Connection):\n    def stop(self):\n"
         "        self._running = False\n", "library base"),
        ("import aiosqlite\nclass C(aiosqlite.Connection):\n    def __init__(self):\n"
         "        self._thread = None\n    def f(self):\n        return self._thread\n",
         "library base"),
        ("def f(x):\n    return object.__getattribute__(x, '_waiters')\n", "by string"),
        # a reviewed use is of one receiver: the same file reaching into another object is not
        ("def f(sa_session):\n    return sa_session._engine\n", "another object"),
        ("from aiosqlite import Connection\nclass C(Connection):\n    def __init__(self):\n"
         "        self._mine = 1\n    def f(self):\n        return self._mine\n", None),
        ("def f(pool):\n    return getattr(pool, '_invalidate')\n", "by string"),
        ("from operator import attrgetter\nattrgetter('_waiters')\n", "by string"),
        ("def t(monkeypatch, a):\n    monkeypatch.setattr(a, '_driver', 1)\n", "by string"),
        ("def f(x):\n    return vars(x)['_y']\n", "__dict__"),
        ("def f(x):\n    return x.__dict__['_y']\n", "__dict__"),
        ("def f(x):\n    return getattr(x, '__name__')\n", None),
    ],
)  # fmt: skip
def test_the_check_finds_what_it_should(source: str, expected: str | None) -> None:
    """The checker itself: each kind of reach is found, our own private names pass. The
    probe's names are checked against the project's real members, as the project is."""
    tree = ast.parse(source)
    members = project_members() | {
        n for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for n in _members(node)
    }
    found = list(_violations(source, "probe.py", members))
    if expected is None:
        assert found == []
    else:
        assert found and all(expected in f for f in found), found
