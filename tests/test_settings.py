from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from bot.cli import main
from bot.errors import ConfigError
from bot.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "parley.toml"


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            paths |= _leaf_paths(ann, f"{prefix}{name}.")
        else:
            paths.add(prefix + name)
    return paths


def _uncommented_config() -> dict[str, object]:
    text = re.sub(r"(?m)^#(\w+ = )", r"\1", CONFIG.read_text())
    return tomllib.loads(text)


def _flatten(data: dict[str, object], prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


def test_config_file_lists_every_setting_and_sets_none() -> None:
    assert _flatten(_uncommented_config()) == _leaf_paths(Settings)
    assert _flatten(tomllib.loads(CONFIG.read_text())) == set()


def test_every_listed_value_is_valid() -> None:
    values = _uncommented_config()
    values["backend"] = {**values["backend"], "kind": "none"}  # type: ignore[dict-item]
    Settings(**values)


def test_environment_beats_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "p.toml"
    config.write_text('log_level = "ERROR"\n[conversation]\nburst = "queue"\nhistory_limit = 5\n')
    monkeypatch.setenv("PARLEY_CONVERSATION__BURST", "merge")
    settings = load_settings(config)
    assert settings.conversation.burst == "merge"
    assert settings.conversation.history_limit == 5
    assert settings.log_level == "ERROR"


def test_bad_setting_names_it_and_hides_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_BACKEND__KIND", "openai")
    monkeypatch.setenv("PARLEY_BACKEND__API_KEY", "sk-very-secret")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "PARLEY_BACKEND" in message and "base_url" in message
    assert "sk-very-secret" not in message
    assert "\n" not in message


def test_wrong_type_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_CONVERSATION__CONTEXT_TOKENS", "lots")
    with pytest.raises(ConfigError, match=r"PARLEY_CONVERSATION__CONTEXT_TOKENS: .*integer"):
        load_settings()


def test_broken_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[database\nurl=")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_settings(config)


def test_cli_reports_bad_setting_in_one_line_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARLEY_DATABASE__URL", "postgresql+asyncpg://u:hunter2@h/db")
    monkeypatch.setenv("PARLEY_BACKEND__KIND", "vllm")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("parley: error: invalid setting PARLEY_BACKEND")
    assert "Traceback" not in err and "hunter2" not in err


def test_secrets_are_masked_in_config_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARLEY_DATABASE__URL", "postgresql+asyncpg://u:hunter2@h/db")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "**********" in out
