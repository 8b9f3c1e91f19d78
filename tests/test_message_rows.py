"""Message rows are read and deleted only through the `Store` (issue 19).

The `Store` (bot/storage/) owns the `messages` table: its statements keep the partial pending
index usable, its ids remembered and its statement budget counted. This test reads the
project's code with `ast` and fails where a module outside bot/storage/ names the table:
`MessageRow` imported or used, the table by name (`Table("messages", ...)`,
`metadata.tables["messages"]`), or SQL text that reads or writes it. Migrations keep their own
table definitions and are not read; tests and benchmarks seed and inspect the database as
fixtures and are not read either.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("bot", "adapters", "backends")
OWNER = ROOT / "bot" / "storage"
MODEL = "MessageRow"
TABLE = "messages"
# SQL text (it begins with a statement's keyword) naming the table: FROM / JOIN / INTO /
# UPDATE / TABLE / ANALYZE messages. Prose ("a long answer split into messages") passes.
_SQL = re.compile(
    r"^\s*(?=(select|insert|update|delete|with|analyze|vacuum|truncate)\b)"
    r".*\b(from|join|into|update|table|analyze|vacuum)\s+messages\b",
    re.IGNORECASE | re.DOTALL,
)


def _files() -> list[Path]:
    return sorted(
        p for d in SOURCES for p in (ROOT / d).rglob("*.py") if not p.is_relative_to(OWNER)
    )


def uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each use of the messages table in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and any(a.name == MODEL for a in node.names):
            found.append((node.lineno, f"imports {MODEL}"))
        elif isinstance(node, ast.Name) and node.id == MODEL:
            found.append((node.lineno, MODEL))
        elif isinstance(node, ast.Attribute) and node.attr == MODEL:
            found.append((node.lineno, f".{MODEL}"))
        elif isinstance(node, ast.Call) and _called(node) in {"table", "Table"}:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and first.value == TABLE:
                found.append((node.lineno, f'{_called(node)}("{TABLE}")'))
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            if node.slice.value == TABLE and _is_tables(node.value):
                found.append((node.lineno, f'tables["{TABLE}"]'))
        elif isinstance(node, ast.Constant) and _SQL.search(str(node.value)):
            found.append((node.lineno, "SQL text on messages"))
    return found


def _called(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _is_tables(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "tables"


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_outside_the_store_touches_message_rows(path: Path) -> None:
    found = uses(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(ROOT)}: {found}; read or delete through the Store"


@pytest.mark.parametrize(
    "source",
    [
        "from bot.storage.models import MessageRow\n",
        "from bot.storage.models import MessageRow as M\n",
        "import bot.storage.models as m\nq = m.MessageRow.content\n",
        "stmt = sa.delete(MessageRow)\n",
        't = sa.table("messages", sa.column("id"))\n',
        't = Base.metadata.tables["messages"]\n',
        'q = sa.text("SELECT count(*) FROM messages WHERE answered_by IS NULL")\n',
        'q = "DELETE FROM messages WHERE id = :id"\n',
        'await conn.execute(sa.text("ANALYZE messages"))\n',
    ],
)
def test_the_scan_sees_each_way_of_reaching_the_table(source: str) -> None:
    assert uses(source)


def test_the_scan_lets_other_uses_of_the_word_through() -> None:
    source = (
        '"""Splitting a long answer into messages of at most `limit`."""\n'
        'page = {"messages": []}\nn = body["messages"]\nlog.info("3 messages pending")\n'
    )
    assert uses(source) == []
