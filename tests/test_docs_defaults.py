"""The defaults the guides' settings tables give are the code's: in a table of README.md or
docs/*.md with a `default` column, each `key` (dotted, or under the `[section]` named last
before the table) shows its default as the settings have it. config/parley.toml is checked
by tests/test_cfg_config_file.py; this covers the tables an operator reads in the guides."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from bot.settings import settings_class

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# How the tables write "no value": the setting is unset (None) or an empty secret.
_UNSET = {"none", "-", "unset", "none (required)", "generated"}
_NOT_READ = object()  # a cell in words ("a SQLite file in the data folder"): not compared


def _defaults(model: type[BaseModel], path: str = "") -> Iterator[tuple[str, object]]:
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _defaults(ann, f"{path}{name}.")
            continue
        value = field.get_default(call_default_factory=True)
        yield f"{path}{name}", value.get_secret_value() if isinstance(value, SecretStr) else value


def _value(cell: str) -> object:
    text = cell.strip().strip("`").strip()
    if text.lower() in _UNSET:
        return None
    if text in ("true", "false"):
        return text == "true"
    if text in ("[]", "{}"):
        return [] if text == "[]" else {}
    if re.fullmatch(r'"[^"]*"', text):
        return text[1:-1]
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text)
    if match := re.match(r"(\d+(?:\.\d+)?)(?: s)?[:,]? ", text):  # "30 s: on PostgreSQL ..."
        return float(match[1])
    if re.fullmatch(r"[a-z]+", text):  # a word in backticks: `polling`
        return text if cell.strip().startswith("`") else _NOT_READ
    if re.fullmatch(r"https?://\S+", text):
        return text
    return _NOT_READ


def _same(documented: object, default: object) -> bool:
    if isinstance(documented, float) and isinstance(default, int | float):
        return not isinstance(default, bool) and math.isclose(documented, default)
    if documented is None:
        return default in (None, "")
    return documented == default


def _rows(text: str) -> Iterator[tuple[int, str, list[str], list[str]]]:
    """(line, section, names, default cells) of each row of a table with a default column."""
    section, header = "", None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            header = None
            if found := re.findall(r"`?\[([a-z_.]+)\]`?", line):
                section = found[-1]
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if "default" not in header or set("".join(cells)) <= set("-: "):
            continue
        names = re.findall(r"`([a-z_.]+)`", cells[0])
        values = cells[header.index("default")]
        parts = values.split(", ") if len(names) > 1 else [values]
        if len(parts) == len(names):
            yield number, section, names, parts


def _wrong_defaults(text: str) -> list[str]:
    defaults = dict(_defaults(settings_class()))
    wrong = []
    for number, section, names, cells in _rows(text):
        for name, cell in zip(names, cells, strict=True):
            full = name if name in defaults else f"{section}.{name}"
            documented = _value(cell)
            if full not in defaults or documented is _NOT_READ:
                continue
            if not _same(documented, defaults[full]):
                wrong.append(
                    f"line {number}: {full} = {cell}, the code's default is {defaults[full]!r}"
                )
    return wrong


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_default_in_a_settings_table_is_the_codes(doc: Path) -> None:
    assert _wrong_defaults(doc.read_text()) == []


def test_a_wrong_default_is_found() -> None:
    doc = (
        "## Settings: `[support]`\n\n| key | default | meaning |\n| --- | --- | --- |\n"
        "| `token_ttl_s` | 3600 | ... |\n| `visitor_messages`, `ip_requests` | 20, 100 | ... |\n"
        "| `webhook` | none | ... |\n| `backend.kind` | `openai` | ... |\n"
        "| `keepalive_s` | 15 | ... |\n| `token_secret` | generated | ... |\n"
    )
    assert _wrong_defaults(doc) == [
        "line 5: support.token_ttl_s = 3600, the code's default is 2592000",
        "line 6: support.ip_requests = 100, the code's default is 120",
        "line 8: backend.kind = `openai`, the code's default is 'none'",
    ]


def test_the_tables_are_read() -> None:
    """The check is not empty: the guides' tables give dozens of defaults."""
    compared = [
        name
        for doc in DOCS
        for _, _, names, cells in _rows(doc.read_text())
        for name, cell in zip(names, cells, strict=True)
        if _value(cell) is not _NOT_READ
    ]
    assert len(compared) > 60
