"""One key builder (issue 19): every Redis key is spelled in bot/storage/keys.py, and each
spelling stays what earlier versions wrote.

A key whose spelling changes loses what a running Redis holds under the old one (cached
windows, the platforms' shared rate windows, a visitor's event stream, the day's budgets), so
each is pinned here. The scan reads the project's code with `ast` and fails where a module
other than keys.py builds a string from the key prefix (`key_prefix`, `prefix`, `_prefix`)
with an f-string, `+`, `%`, `.format` or `.join`: such a key is spelled outside the builder.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from bot.storage import keys

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("bot", "adapters", "backends")
BUILDER = ROOT / "bot" / "storage" / "keys.py"
_PREFIX_NAME = re.compile(r"^_?(key_)?prefix$")


@pytest.mark.parametrize(
    ("built", "spelled"),
    [
        # The cache's keys, and how RedisCache stores them.
        (keys.window(7), "ctx:7"),
        (keys.chat_prefs(7), "prefs:chat:7"),
        (keys.handoff(7), "handoff:7"),
        (keys.alive("w-1"), "alive:w-1"),
        (keys.rate("telegram:42"), "rate:telegram:42"),
        (keys.counted("telegram:42", "k-1"), "counted:telegram:42:k-1"),
        (keys.rate_told(7), "rate-told:7"),
        (keys.told("telegram:42"), "told:telegram:42"),
        (keys.refused("telegram", "123:456"), "refused:telegram:123:456"),
        (keys.delivered("discord", "789"), "delivered:discord:789"),
        (keys.discord_unreplied(456, 789), "discord:unreplied:456:789"),
        (keys.discord_told("789"), "discord:told:789"),
        (keys.discord_token("789"), "discord:token:789"),
        (keys.discord_deferred("789"), "discord:deferred:789"),
        (keys.discord_taken("789"), "discord:taken:789"),
        (keys.support_ip("10.0.0.1"), "support:ip:10.0.0.1"),
        (keys.support_ip_streams("10.0.0.1"), "support:ip-streams:10.0.0.1"),
        (keys.support_visitor("shop:v-1"), "support:visitor:shop:v-1"),
        (keys.cached("parley", keys.window(7)), "parley:ctx:7"),
        # The platforms' shared rate windows (adapters.kit.gate.RedisGate).
        (keys.platform_gate("parley", "telegram", "123"), "parley:telegram:123"),
        (keys.platform_gate("parley", "discord", "456"), "parley:discord:456"),
        (keys.gate_window("parley:telegram:123", "chat", "42"), "parley:telegram:123:gate:chat:42"),
        (keys.gate_window("parley:discord:456", "overall", "all"),
         "parley:discord:456:gate:overall:all"),
        (keys.gate_tomb("parley:telegram:123", "ab12"), "parley:telegram:123:gate:gone:ab12"),
        # The support API's event log.
        (keys.support_events("parley", "shop:v-1"), "parley:support:events:shop:v-1"),
        (keys.support_answered("parley", "shop:v-1"), "parley:support:answered:shop:v-1"),
        (keys.support_wake("parley"), "parley:support:wake"),
        # The shared token budgets.
        (keys.budget("parley", date(2026, 3, 1), "user", "telegram:42", "h"),
         "parley:budget:{2026-03-01}:user:telegram:42:h"),
        (keys.budget("parley", date(2026, 3, 1), "site", "shop", "z"),
         "parley:budget:{2026-03-01}:site:shop:z"),
    ],
)  # fmt: skip
def test_each_key_keeps_its_spelling(built: str, spelled: str) -> None:
    assert built == spelled


def prefixed_strings(source: str) -> list[int]:
    """The lines where `source` builds a string from a key prefix."""
    return sorted({node.lineno for node in ast.walk(ast.parse(source)) if _builds(node)})


def _builds(node: ast.AST) -> bool:
    if isinstance(node, ast.JoinedStr):
        parts: list[ast.expr] = [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        parts = [node.left, node.right]
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr not in {"format", "join"}:
            return False
        parts = [node.func.value, *node.args]
    else:
        return False
    return any(_PREFIX_NAME.match(name) for part in parts for name in _names(part))


def _names(node: ast.expr) -> Iterator[str]:
    for each in ast.walk(node):
        if isinstance(each, ast.Name):
            yield each.id
        elif isinstance(each, ast.Attribute):
            yield each.attr


def _files() -> list[Path]:
    return sorted(p for d in SOURCES for p in (ROOT / d).rglob("*.py") if p != BUILDER)


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_key_is_spelled_outside_the_builder(path: Path) -> None:
    lines = prefixed_strings(path.read_text(encoding="utf-8"))
    assert not lines, f"{path.relative_to(ROOT)}:{lines}: build the key in bot/storage/keys.py"


@pytest.mark.parametrize(
    "source",
    [
        'key = f"{settings.redis.key_prefix}:telegram:{bot_id}"\n',
        'key = f"{self._prefix}:gate:gone:{slot_id}"\n',
        'key = prefix + ":support:wake"\n',
        'key = "%s:budget" % key_prefix\n',
        'key = "{}:ctx:{}".format(self._prefix, 7)\n',
        'key = ":".join([key_prefix, "ctx", "7"])\n',
    ],
)
def test_the_scan_sees_each_way_of_spelling_a_key(source: str) -> None:
    assert prefixed_strings(source) == [1]


def test_the_scan_lets_other_prefixes_and_calls_through() -> None:
    source = (
        'stored = AGENT_KEY_PREFIX + scoped\ntext = line.removeprefix("> ")\n'
        "gate = keys.platform_gate(settings.redis.key_prefix, 'telegram', bot_id)\n"
    )
    assert prefixed_strings(source) == []
