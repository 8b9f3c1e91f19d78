from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from bot.cli import main
from bot.errors import ConfigError
from bot.settings import load_settings, settings_class

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


def _flatten(data: dict[str, object], prefix: str = "", leaves: set[str] | None = None) -> set[str]:
    """The paths of `data`'s values; a table is a value where `leaves` names it (a setting
    whose value is a mapping or an optional model, e.g. support.webhook)."""
    out = set()
    for key, value in data.items():
        path = prefix + key
        if isinstance(value, dict) and path not in (leaves or set()):
            out |= _flatten(value, f"{path}.", leaves)
        else:
            out.add(path)
    return out


def test_config_file_lists_every_setting_and_sets_none() -> None:
    leaves = _leaf_paths(settings_class())
    assert _flatten(_uncommented_config(), leaves=leaves) == leaves
    assert _flatten(tomllib.loads(CONFIG.read_text())) == set()


def test_every_listed_value_is_valid() -> None:
    values = _uncommented_config()
    values["backend"] = {**values["backend"], "kind": "none"}  # type: ignore[dict-item]
    settings_class()(**values)


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


def _run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`parley ARGS` in a process of its own, as an operator runs it: (exit status, stderr).
    A sitecustomize.py in tmp_path runs first in that process."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    clean |= {"PARLEY_HOME": str(tmp_path / "home"), **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stderr


def test_a_typo_inside_a_section_names_the_file_section_and_key(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text("[telegram.access]\nallowed_user = [7]\n")
    status, err = _run_cli(tmp_path, "--config", str(config), "config")
    assert status == 2
    expected = "invalid setting parley.toml [telegram.access] allowed_user: unknown setting"
    assert err == f"parley: error: {expected}\n"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[HTTP]\nPort = 9000\n", "parley.toml [http] Port: unknown setting"),
        ('[HTTP]\nport = "x"\n', "parley.toml [http] port: Input should be a valid integer"),
    ],
)
def test_a_section_named_in_capitals_is_named_as_the_files(
    text: str, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings take a section's name in any case (`[HTTP]`); a bad key in it was named as
    the variable PARLEY_HTTP__PORT, which the operator never set (an operator's trial)."""
    for name in [n for n in os.environ if n.upper().startswith("PARLEY_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "parley.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    assert str(refused.value).startswith(f"invalid setting {named}"), str(refused.value)


def test_lists_take_comma_separated_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_ADAPTERS", "console, telegram")
    monkeypatch.setenv("PARLEY_TELEGRAM__ACCESS__ALLOWED_USERS", "7,8")
    settings = load_settings()
    assert settings.adapters == ["console", "telegram"]
    assert settings.section("telegram").access.allowed_users == ["7", "8"]  # type: ignore[attr-defined]
    monkeypatch.setenv("PARLEY_TELEGRAM__ACCESS__ALLOWED_USERS", "[9]")
    assert load_settings().section("telegram").access.allowed_users == ["9"]  # type: ignore[attr-defined]
    monkeypatch.setenv("PARLEY_TELEGRAM__ACCESS__ALLOWED_USERS", "9")  # one id, not JSON's 9
    assert load_settings().section("telegram").access.allowed_users == ["9"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PARLEY_ADAPTERS", "telgram", "unknown adapter 'telgram'; installed: console, telegram"),
        ("PARLEY_DATABASE__URL", "postgres//nohost", "not a database URL"),
        ("PARLEY_DATABASE__URL", "mysql://u@h/db", "is not supported"),
        ("PARLEY_DATABASE__URL", "foo://x", "foo is not supported"),
        (
            "PARLEY_DATABASE__URL",
            "postgresql://u@h/db?sslmode=require&channel_binding=require",
            "channel_binding: libpq URL parameters that asyncpg does not take",
        ),
        ("PARLEY_DATABASE__URL", "postgresql+psycopg2://u@h/db", "is not supported"),
        ("PARLEY_REDIS__URL", "http://cache:6379", "not a Redis URL"),
        ("PARLEY_ADAPTERS", "[console", "invalid setting"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(
    tmp_path: Path, variable: str, value: str, says: str
) -> None:
    status, err = _run_cli(tmp_path, "config", env={variable: value})
    assert status == 2
    assert err.startswith("parley: error: ") and says in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgres://u:pw@db:5432/parley", "postgresql+asyncpg://u:pw@db:5432/parley"),
        ("postgresql://u@db/parley?ssl=require", "postgresql+asyncpg://u@db/parley?ssl=require"),
        ("sqlite:////data/parley.db", "sqlite+aiosqlite:////data/parley.db"),
        ("postgresql+asyncpg://u@db/parley", "postgresql+asyncpg://u@db/parley"),
        # libpq's sslmode is asyncpg's ssl (a provider's URL failed at connect: TypeError).
        ("postgres://u@db/parley?sslmode=require", "postgresql+asyncpg://u@db/parley?ssl=require"),
        ("postgresql://u@/parley?host=/run/pg", "postgresql+asyncpg://u@/parley?host=%2Frun%2Fpg"),
    ],
)
def test_a_database_url_without_a_driver_gets_parleys(given: str, used: str) -> None:
    """`postgres://` (the form Heroku and Render hand out) printed a 30-line traceback of
    SQLAlchemy's dialect registry, exit 1; `postgresql://` was refused."""
    from bot.settings import DatabaseSettings

    assert DatabaseSettings(url=given).url.get_secret_value() == used  # type: ignore[arg-type]


def test_a_providers_postgres_url_with_sslmode_connects(tmp_path: Path, postgres_url: str) -> None:
    """A hosting provider's URL, postgres://...?sslmode=..., used as given."""
    given = postgres_url.replace("postgresql+asyncpg://", "postgres://", 1) + "?sslmode=disable"
    assert given.startswith("postgres://") and "?" not in postgres_url
    status, err = _run_cli(tmp_path, "db", "upgrade", env={"PARLEY_DATABASE__URL": given})
    assert (status, err) == (0, "")


def test_a_postgresql_url_without_its_driver_names_the_extra(tmp_path: Path) -> None:
    # A process in which asyncpg cannot be imported, as after `pip install parley` alone.
    # sys.modules[name] = None is how Python marks a module that cannot be imported.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['asyncpg'] = None\n")
    status, err = _run_cli(
        tmp_path, "config", env={"PARLEY_DATABASE__URL": "postgresql+asyncpg://u:pw@db/parley"}
    )
    assert status == 2
    assert "pip install 'parley[postgres]'" in err
    assert err.count("\n") == 1 and "pw" not in err


def test_the_default_database_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    url = load_settings().database.url.get_secret_value()
    assert url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'parley.db'}"


def test_two_backends_of_one_name_are_refused() -> None:
    """A fallback serving the primary's model (a replica) had the primary's name: their
    metrics were summed into one series, and the fallback's closed breaker hid the primary's
    open one (a helper's walkthrough). A label tells them apart."""
    replica = {"kind": "openai", "model": "m", "base_url": "http://10.0.0.2:8000"}
    backend = {"kind": "openai", "model": "m", "base_url": "http://10.0.0.1:8000"}
    with pytest.raises(ConfigError, match=r"backend.fallbacks\[0\] has the name of a backend"):
        load_settings(None, backend={**backend, "fallbacks": [replica]})
    labelled = load_settings(None, backend={**backend, "fallbacks": [{**replica, "label": "m2"}]})
    assert labelled.backend.fallbacks[0].label == "m2"


@pytest.mark.parametrize(
    ("section", "name", "value", "said"),
    [
        ("handoff", "agent_language", "klingon", "not a language tag: 'klingon'"),
        ("skills", "default_language", "English", "not a language tag: 'English'"),
    ],
)
def test_a_language_setting_must_name_a_language(
    section: str, name: str, value: str, said: str
) -> None:
    """Both were taken as they were (an operator's review); summaries and agent translations
    then asked the model for a language by a name that is not one. Any tag still goes: a
    first check refused tags that configs in use hold (the review of this session's
    commits)."""
    with pytest.raises(ConfigError, match=said):
        load_settings(None, **{section: {name: value}})
    for tag in ("pt-BR", "EN", "en_US", "zh-Hant-TW", "sr-Latn-RS", "de-DE-1996", "deu", "fil"):
        assert getattr(getattr(load_settings(None, **{section: {name: tag}}), section), name)


def test_a_dotenv_line_of_another_program_is_not_warned_of(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """python-dotenv warned of a line it could not parse, another program's, twice on every
    command (an operator's review); a PARLEY_ line that cannot be parsed is still refused."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARLEY_CONFIG", os.devnull)
    (tmp_path / ".env").write_text('PARLEY_LOG_LEVEL=INFO\nOTHER_SECRET="abc\n')
    assert main(["config"]) == 0
    assert "dotenv" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.name.startswith("dotenv")]
    (tmp_path / ".env").write_text('PARLEY_LOG_LEVEL="INFO\n')
    assert main(["config"]) == 2
    assert "PARLEY_LOG_LEVEL: cannot be parsed" in capsys.readouterr().err
