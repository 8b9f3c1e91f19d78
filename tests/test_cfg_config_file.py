"""config/parley.toml says each commented line shows the setting's default: every line that
shows something else must say "example" in its comment, so the file cannot drift again."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from bot.settings import load_settings, settings_class

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "parley.toml"
_SETTING = re.compile(r"#(\w+) = (.+)")
_SECTION = re.compile(r"\[([\w.]+)\]")
# The word, not a domain such as desk.example in a URL.
_EXAMPLE = re.compile(r"(?<![\w./])examples?(?![\w/]|\.\w)", re.IGNORECASE)


def _commented_settings(text: str) -> Iterator[tuple[str, str, object, str]]:
    """(section, name, value, comment) of each `#name = value` line, the comment being the
    prose lines above it (shared by the settings listed together under it)."""
    section, prose = "", False
    comment: list[str] = []
    for line in text.splitlines():
        if match := _SECTION.fullmatch(line):
            section, comment, prose = match[1], [], False
        elif match := _SETTING.fullmatch(line):
            prose = False
            yield section, match[1], tomllib.loads(f"v = {match[2]}")["v"], " ".join(comment)
        elif line.startswith("#"):
            comment = comment if prose else []
            comment.append(line)
            prose = True
        else:
            comment, prose = [], False


def _model(section: str) -> type[BaseModel]:
    model: type[BaseModel] = settings_class()
    for name in filter(None, section.split(".")):
        annotation = model.model_fields[name].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel), section
        model = annotation
    return model


def _default(model: type[BaseModel], name: str) -> object:
    default = model.model_fields[name].get_default(call_default_factory=True)
    return default.get_secret_value() if isinstance(default, SecretStr) else default


def _undeclared_examples(text: str) -> list[str]:
    wrong = []
    for section, name, value, comment in _commented_settings(text):
        default = _default(_model(section), name)
        if value != default and not _EXAMPLE.search(comment):
            wrong.append(f"[{section}] {name} = {value!r} (default {default!r})")
    return wrong


def test_every_commented_line_shows_the_default_or_says_example() -> None:
    assert _undeclared_examples(CONFIG.read_text()) == []


def test_the_check_finds_a_wrong_default_and_accepts_a_declared_example() -> None:
    text = (
        "[backend]\n# Context length.\n#max_model_len = 4096\n#max_tokens = 100\n"
        "# Most tokens in one reply.\n#max_tokens = 512\n"
        '[database]\n# For example:\n#url = "sqlite+aiosqlite:////srv/p.db"\n'
    )
    assert _undeclared_examples(text) == [
        "[backend] max_model_len = 4096 (default None)",
        "[backend] max_tokens = 100 (default 512)",
    ]
    # A comment block ends at a section header: its "example" does not carry over.
    assert _undeclared_examples('# Example.\n#log_level = "INFO"\n[http]\n#port = 1\n') == [
        "[http] port = 1 (default 8080)"
    ]


def _example_env_choices(text: str) -> list[list[str]]:
    """The `.env` files config/example.env offers: its lines before the first choice (a
    comment ending in ":"), with the lines of each choice in turn."""
    common: list[str] = []
    choices: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("# PARLEY_"):
            (choices[-1] if choices else common).append(line.removeprefix("# "))
        elif line.endswith(":"):
            choices.append([])
    return [common + choice for choice in choices] or [common]


def test_example_env_loads_as_each_of_its_choices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config/example.env ("copy to .env and fill in") had no test: each choice it offers,
    uncommented as an operator would, is a `.env` whose every line is a setting that loads."""
    for name in [n for n in os.environ if n.startswith("PARLEY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    choices = _example_env_choices((ROOT / "config" / "example.env").read_text())
    assert len(choices) == 2  # in-process vLLM, an OpenAI-compatible server
    for lines in choices:
        (tmp_path / ".env").write_text("\n".join(lines) + "\n")
        settings = load_settings()
        shown = settings.model_dump(mode="json")
        for line in lines:
            name, value = line.removeprefix("PARLEY_").split("=", 1)
            section, key = name.lower().split("__")
            assert shown[section][key] is not None, line
            if "CHANGE-ME" not in value and not key.endswith("url"):
                assert str(shown[section][key]) == value, line
