"""docs/configuration.md names every setting: a key is documented in the row of the Sections
table, or under the heading, that names its section."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from bot.settings import NOT_SETTINGS, NOT_SETTINGS_PREFIXES, settings_class

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


# Names in the docs that look like settings and are not: the webhooks' event types and payload
# fields (docs/support.md, docs/support-desk.md), a third-party adapter's example section
# (docs/adapters.md) and the misspelt variable the configuration guide shows refused.
NOT_SETTINGS_IN_DOCS = frozenset(
    {
        "handoff.requested", "handoff.taken", "handoff.returned",
        "conversation.id", "conversation.chat_id", "conversation.visitor_id",
        "PARLEY_EXAMPLE", "PARLEY_EXAMPLE__TOKEN", "PARLEY_DATABSE__URL",
    }
)  # fmt: skip


def _setting_paths(model: type[BaseModel], path: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        dotted = f"{path}.{name}".lstrip(".")
        yield dotted
        ann = field.annotation
        for part in (ann, *getattr(ann, "__args__", ())):
            if isinstance(part, type) and issubclass(part, BaseModel):
                yield from _setting_paths(part, dotted)


def _unknown_names(doc: str) -> list[str]:
    """Each `section.key` (in backticks) and PARLEY_* variable in `doc` that names no
    setting, nor a section that has settings."""
    paths = set(_setting_paths(settings_class()))
    sections = {p.split(".")[0] for p in paths}
    variables = {"PARLEY_" + p.upper().replace(".", "__") for p in paths}
    found = []
    for name in re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)(?:\s*=[^`]*)?`", doc):
        if name.split(".")[0] in sections and name not in paths:
            found.append(name)
    for name in re.findall(r"PARLEY_[A-Z0-9_]*[A-Z0-9]", doc):
        if name in NOT_SETTINGS or name.startswith(NOT_SETTINGS_PREFIXES):
            continue
        if name in variables or any(v.startswith(name + "__") for v in variables):
            continue
        if name + "_" in NOT_SETTINGS_PREFIXES:  # the prefixes, named as such
            continue
        found.append(name)
    return [name for name in found if name not in NOT_SETTINGS_IN_DOCS]


def test_every_setting_the_docs_name_exists() -> None:
    """The other way round: a setting renamed or removed is not left in README.md or docs/
    under its old name (`conversation.retention_days`, PARLEY_BACKEND__BASE_URL)."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    unknown = {doc.name: _unknown_names(doc.read_text()) for doc in docs}
    assert {name: found for name, found in unknown.items() if found} == {}


def test_a_stale_name_in_the_docs_is_found() -> None:
    doc = (
        "Set `backend.base_url` and `conversation.retention_day`, PARLEY_REDIS__URL and "
        "PARLEY_REDIS__URI, PARLEY_BACKEND__TIMEOUTS__TOTAL_S, `support.webhooks`."
    )
    assert _unknown_names(doc) == ["conversation.retention_day", "PARLEY_REDIS__URI"]


def test_every_variable_exempt_from_the_settings_is_in_the_configuration_guide() -> None:
    """An operator who meets PARLEY_ENGINE_PARENT in a process's environment finds it named as
    Parley's own, not taken for a setting they may set (the guide left it out before)."""
    guide = DOC.read_text()
    exempt = [*sorted(NOT_SETTINGS), *NOT_SETTINGS_PREFIXES]
    assert [name for name in exempt if f"`{name}`" not in guide] == []
