"""A site's languages must be ones Parley knows (bot/text/languages.py, by the tag's base
language): `parley support site add/update --language zz-INVALID` is refused with the CLI's
one-line error and status 2, and nothing is stored. The real CLI on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path))
    monkeypatch.delenv("PARLEY_DATABASE__URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no config/parley.toml here
    return tmp_path


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def _listed(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["support", "site", "list"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("language", ["zz-INVALID", "qq", "xyz"])
def test_supfix_an_unknown_language_is_refused(
    home: Path, language: str, capsys: pytest.CaptureFixture[str]
) -> None:
    add = ["support", "site", "add", "x8", "--origin", "https://a.example"]
    err = _refused([*add, "--language", "en", "--language", language], capsys)
    assert f"unknown language: {language!r} (e.g. en, pt-BR)" in err
    assert "x8" not in _listed(capsys)
    assert main([*add, "--language", "pt-BR", "--language", "de"]) == 0
    capsys.readouterr()
    err = _refused(["support", "site", "update", "x8", "--language", language], capsys)
    assert "unknown language" in err
    assert "languages: pt-BR, de;" in _listed(capsys)  # nothing changed
