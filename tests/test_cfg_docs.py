"""docs/configuration.md names every setting: a key is documented in the row of the Sections
table, or under the heading, that names its section."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from bot.settings import settings_class

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"


def _sections(model: type[BaseModel], path: str = "") -> Iterator[tuple[str, list[str]]]:
    """(dotted section, its keys) of every section of `model`; "" is the top level."""
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _sections(ann, f"{path}.{name}".lstrip("."))
        else:
            keys.append(name)
    yield path, keys


def _places(doc: str) -> Iterator[tuple[str, str]]:
    """(name, text) of each table row (named by its first cell) and each `##` part (named by
    its heading)."""
    for part in re.split(r"(?m)^(?=## )", doc):
        heading, _, body = part.partition("\n")
        yield heading, body
        for row in re.findall(r"(?m)^\|.*\|$", body):
            yield row.split("|")[1], row


def _undocumented(doc: str) -> list[str]:
    missing = []
    for section, keys in _sections(settings_class()):
        names = [f"`[{section}]`"] if section else ["top level"]
        if section.endswith(".access"):  # one table for every adapter's
            names.append("`[ADAPTER.access]`")
        text = " ".join(t for name, t in _places(doc) if any(n in name for n in names))
        missing += [f"{section or 'top level'}: {k}" for k in keys if f"`{k}`" not in text]
    return missing


def test_every_setting_is_in_the_configuration_guide() -> None:
    assert _undocumented(DOC.read_text()) == []


def test_a_key_counts_only_where_its_section_is_named() -> None:
    doc = (
        "## Sections\n\n| section | what |\n| --- | --- |\n"
        "| `[http]` | `host`, `port` |\n| `[metrics]` | `host` |\n"
    )
    assert "metrics: port" in _undocumented(doc)
    assert "http: port" not in _undocumented(doc)
