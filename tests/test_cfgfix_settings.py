"""Settings from .env, malformed variables and out-of-range numbers, through `parley config`
as an operator runs it: real files in the working directory, real environment variables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.cli import main

INTEGER_ERROR = "Input should be a valid integer, unable to parse string as an integer"


pytestmark = pytest.mark.usefixtures("operator_folder")


def _config(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main([*args, "config"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The one error line of a `parley config` that must exit 2, without its prefix."""
    status, out, err = _config(capsys, *args)
    assert (status, out) == (2, ""), err
    assert err.startswith("parley: error: invalid setting ") and err.count("\n") == 1, err
    return err.removeprefix("parley: error: ").removesuffix("\n")


def test_cfgfix_compose_variables_in_dotenv_are_left_to_compose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The .env docs/deployment.md asks for made every command fail, naming PARLEY_ variables
    that were never written; a LOG_LEVEL meant for another service set Parley's."""
    (tmp_path / ".env").write_text(
        "POSTGRES_PASSWORD=s3cretpw\nTELEGRAM_TOKEN=1:x\nLOG_LEVEL=DEBUG\nPARLEY_LOG_FORMAT=json\n"
    )
    status, out, err = _config(capsys)
    assert status == 0, err
    settings = json.loads(out)
    assert (settings["log_level"], settings["log_format"]) == ("INFO", "json")
    assert "s3cretpw" not in out


def test_cfgfix_unknown_parley_names_in_dotenv_are_refused_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text("PARLEY_LOGLEVEL=DEBUG\nPARLEY_DATABSE__URL=x\nPARLEY_HOME=/d\n")
    assert _refused(capsys) == (
        "invalid setting .env PARLEY_LOGLEVEL: unknown setting; "
        ".env PARLEY_DATABSE__URL: unknown setting; "
        ".env PARLEY_HOME: not read from .env; set it in the environment"
    )


def test_cfgfix_a_dotenv_line_that_cannot_be_parsed_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """python-dotenv warns and skips such a line: log_level stayed INFO, exit 0."""
    (tmp_path / ".env").write_text('# settings\nexport PARLEY_LOG_LEVEL="DEBUG\nOTHER=1\n')
    assert _refused(capsys) == (
        "invalid setting .env line 2 PARLEY_LOG_LEVEL: cannot be parsed (check its quotes)"
    )


def test_cfgfix_a_line_that_cannot_be_parsed_for_someone_else_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text('OTHER="a" b\nPARLEY_LOG_LEVEL=DEBUG\n')
    status, out, err = _config(capsys)
    assert status == 0, err
    assert json.loads(out)["log_level"] == "DEBUG"


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("environment", "PARLEY_CONVERSATION__CONTEXT_TOKENS"),
        (".env", ".env PARLEY_CONVERSATION__CONTEXT_TOKENS"),
        ("parley.toml", "parley.toml [conversation] context_tokens"),
    ],
)
def test_cfgfix_a_bad_value_names_the_source_it_came_from(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
    says: str,
) -> None:
    """A value from .env was reported as if it were an environment variable."""
    if where == "environment":
        monkeypatch.setenv("PARLEY_CONVERSATION__CONTEXT_TOKENS", "abc")
    elif where == ".env":
        (tmp_path / ".env").write_text("PARLEY_CONVERSATION__CONTEXT_TOKENS=abc\n")
    else:
        (tmp_path / "parley.toml").write_text('[conversation]\ncontext_tokens = "abc"\n')
        monkeypatch.setenv("PARLEY_CONFIG", str(tmp_path / "parley.toml"))
    assert _refused(capsys) == f"invalid setting {says}: {INTEGER_ERROR}"


def test_cfgfix_the_environment_beats_dotenv_in_errors_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text("PARLEY_CONVERSATION__CONTEXT_TOKENS=4096\n")
    monkeypatch.setenv("PARLEY_CONVERSATION__CONTEXT_TOKENS", "abc")
    assert (
        _refused(capsys) == f"invalid setting PARLEY_CONVERSATION__CONTEXT_TOKENS: {INTEGER_ERROR}"
    )


NOT_A_LIST = "not a valid JSON list (or items separated by commas)"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PARLEY_TELEGRAM__ACCESS__ALLOWED_USERS", "[7,", NOT_A_LIST),
        ("PARLEY_DISCORD__ACCESS__ALLOWED_USERS", '["7"', NOT_A_LIST),
        ("PARLEY_ADAPTERS", "[console", NOT_A_LIST),
        ("PARLEY_TELEGRAM", '{"mode": ', "not valid JSON"),
    ],
)
@pytest.mark.parametrize("where", ["environment", ".env"])
def test_cfgfix_malformed_json_in_a_variable_names_the_variable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
    variable: str,
    value: str,
    says: str,
) -> None:
    """It said 'error parsing value for field "telegram" from source "_ListFriendlyEnv"'."""
    if where == "environment":
        monkeypatch.setenv(variable, value)
        origin = variable
    else:
        (tmp_path / ".env").write_text(f"{variable}='{value}'\n")
        origin = f".env {variable}"
    assert _refused(capsys) == f"invalid setting {origin}: {says}"


def test_cfgfix_dotenv_takes_comma_separated_lists_as_variables_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text(
        "PARLEY_ADAPTERS=console,telegram\nPARLEY_TELEGRAM__ACCESS__ALLOWED_USERS=7,8\n"
    )
    status, out, err = _config(capsys)
    assert status == 0, err
    settings = json.loads(out)
    assert settings["adapters"] == ["console", "telegram"]
    assert settings["telegram"]["access"]["allowed_users"] == ["7", "8"]


FINITE = "Input should be a finite number"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PARLEY_BACKEND__TIMEOUTS__TOTAL_S", "inf"),
        ("PARLEY_BACKEND__TIMEOUTS__TOTAL_S", "nan"),
        ("PARLEY_KNOWLEDGE__SEMANTIC_WEIGHT", "Infinity"),
        ("PARLEY_BUDGET__RESERVATION_TTL_S", "inf"),
        ("PARLEY_TELEGRAM__STREAM_INTERVAL_S", "inf"),
    ],
)
def test_cfgfix_float_settings_are_finite(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    """`parley config` printed "total_s": Infinity, which is not JSON."""
    monkeypatch.setenv(variable, value)
    assert _refused(capsys) == f"invalid setting {variable}: {FINITE}"


def test_cfgfix_infinity_in_the_toml_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "p.toml"
    config.write_text("[backend.timeouts]\ntotal_s = inf\n[telegram]\nstream_interval_s = inf\n")
    assert _refused(capsys, "--config", str(config)) == (
        f"invalid setting p.toml [backend.timeouts] total_s: {FINITE}; "
        f"p.toml [telegram] stream_interval_s: {FINITE}"
    )


@pytest.mark.parametrize(
    ("variable", "value", "most"),
    [
        ("PARLEY_CONVERSATION__MAX_MESSAGE_CHARS", "1000001", "1000000"),
        ("PARLEY_CONVERSATION__MAX_TURN_ATTEMPTS", "101", "100"),
        ("PARLEY_SKILLS__MISSED_MAX_MESSAGES", "10001", "10000"),
        ("PARLEY_CONVERSATION__RATE_LIMIT_MESSAGES", str(2**63), str(2**63 - 1)),
        ("PARLEY_BUDGET__USER_DAILY_TOKENS", "99999999999999999999", str(2**63 - 1)),
    ],
)
def test_cfgfix_integer_settings_have_an_upper_bound(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    most: str,
) -> None:
    monkeypatch.setenv(variable, value)
    expected = f"invalid setting {variable}: Input should be less than or equal to {most}"
    assert _refused(capsys) == expected


def test_cfgfix_an_oversized_integer_in_the_toml_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "p.toml"
    config.write_text("[conversation]\nmax_message_chars = 99999999999999999999\n")
    assert _refused(capsys, "--config", str(config)) == (
        "invalid setting p.toml [conversation] max_message_chars: "
        "Input should be less than or equal to 1000000"
    )


def test_cfgfix_the_largest_64_bit_integer_is_accepted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARLEY_BUDGET__USER_DAILY_TOKENS", str(2**63 - 1))
    status, out, err = _config(capsys)
    assert status == 0, err
    assert json.loads(out)["budget"]["user_daily_tokens"] == 2**63 - 1


def test_cfgfix_a_boolean_in_the_toml_file_is_no_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`port = true` was read as port 1, `user_daily_tokens = true` as a budget of one token:
    pydantic takes a TOML boolean for 1 or 0. Booleans stay where a setting takes one, and a
    variable that sets the same setting is the value in effect."""
    config = tmp_path / "p.toml"
    config.write_text(
        "[http]\nport = true\n[budget]\nuser_daily_tokens = true\n"
        "[conversation]\nmax_turns = false\n[telegram]\nstream_interval_s = true\n"
        "[database]\necho = true\nauto_migrate = false\n[metrics]\non_http = true\n"
    )
    wrong = "Input should be a number, not true or false"
    assert _refused(capsys, "--config", str(config)) == (
        f"invalid setting p.toml [http] port: {wrong}; "
        f"p.toml [budget] user_daily_tokens: {wrong}; "
        f"p.toml [conversation] max_turns: {wrong}; "
        f"p.toml [telegram] stream_interval_s: {wrong}"
    )
    config.write_text("[http]\nport = true\n[database]\necho = true\n")
    monkeypatch.setenv("PARLEY_HTTP__PORT", "8081")
    status, out, err = _config(capsys, "--config", str(config))
    assert (status, err) == (0, ""), err
    shown = json.loads(out)
    assert (shown["http"]["port"], shown["database"]["echo"]) == (8081, True)


def test_cfgfix_parley_home_with_a_tilde_is_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PARLEY_HOME=~/parley, as written in a systemd unit or compose's environment (which
    expand no `~`), put the history in a folder named `~` under the working directory: each
    folder `parley` started in had a history of its own."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PARLEY_HOME", "~/parley")
    status, out, err = _config(capsys)
    assert status == 0, err
    assert json.loads(out)["database"]["url"] == f"sqlite+aiosqlite:///{tmp_path}/parley/parley.db"


def test_cfgfix_folder_settings_with_a_tilde_are_in_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `~` in the SQLite database's path, the embedding model's folder or the prompts'
    folder, as written in a systemd unit or compose's environment (which expand none), made
    a folder named `~` under the working directory (the database's parent is created at
    start), so each folder parley started in had a history and a model copy of its own."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PARLEY_DATABASE__URL", "sqlite+aiosqlite:///~/data/parley.db")
    monkeypatch.setenv("PARLEY_KNOWLEDGE__EMBEDDINGS_CACHE", "~/models")
    monkeypatch.setenv("PARLEY_SKILLS__PROMPTS_DIR", "~/prompts")
    status, out, err = _config(capsys)
    assert status == 0, err
    shown = json.loads(out)
    assert shown["database"]["url"] == f"sqlite+aiosqlite:///{tmp_path}/data/parley.db"
    assert shown["knowledge"]["embeddings_cache"] == f"{tmp_path}/models"
    assert shown["skills"]["prompts_dir"] == f"{tmp_path}/prompts"
