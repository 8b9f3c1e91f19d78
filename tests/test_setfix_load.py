"""Settings that could not work and were taken at load: each is refused there, exit 2 with one
line naming the setting and never a secret, as `parley config`, `doctor`, `run` and `db upgrade`
are run by an operator (an operator review of the settings' validators)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main
from tests.processes import parley_env

pytestmark = pytest.mark.usefixtures("operator_folder")


def _refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, **env: str
) -> str:
    """The one error line of a `parley config` that must exit 2, with the variables `env`."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status = main(["config"])
    captured = capsys.readouterr()
    assert (status, captured.out) == (2, ""), captured.err
    err = captured.err
    assert err.startswith("parley: error: invalid setting ") and err.count("\n") == 1, err
    return err.removeprefix("parley: error: ").removesuffix("\n")


def _parley(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """`parley ARGS` in a process of its own: (exit status, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=tmp_path,
        env=parley_env(tmp_path, env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        # Under a setting of one value: skipped by the environment source, exit 0.
        ({"PARLEY_LOG_LEVEL__X": "1"}, "PARLEY_LOG_LEVEL__X"),
        # Beside the setting it lies under: skipped too, the URL used alone.
        (
            {"PARLEY_REDIS__URL": "redis://127.0.0.1:6379/1", "PARLEY_REDIS__URL__X": "1"},
            "PARLEY_REDIS__URL__X",
        ),
        ({"PARLEY_BACKEND__TIMEOUTS__CONNECT_S__Y": "1"}, "PARLEY_BACKEND__TIMEOUTS__CONNECT_S__Y"),
    ],
)
def test_setfix_a_variable_under_a_setting_of_one_value_is_unknown(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str],
    named: str,
) -> None:
    """docs/configuration.md: a variable that names no setting is an error. Only the first
    part of its name was checked."""
    assert _refused(capsys, monkeypatch, **variables) == f"invalid setting {named}: unknown setting"


def test_setfix_nested_variables_that_name_settings_are_taken(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A section's setting, a section within a section, a table's entry, a name in lower case."""
    for name, value in {
        "PARLEY_BACKEND__TIMEOUTS__CONNECT_S": "3",
        "PARLEY_TELEGRAM__ACCESS__ALLOWED_USERS": "7",
        "PARLEY_SUPPORT__WEBHOOKS__SHOP__URL": "http://127.0.0.1:9/hook",
        "PARLEY_SUPPORT__WEBHOOKS__SHOP__SECRET": "s" * 32,
        "parley_redis__url": "redis://127.0.0.1:6379/1",
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["config"]) == 0, capsys.readouterr().err


# --- database.url's port ----------------------------------------------------------------------


@pytest.mark.parametrize("port", ["99999", "0", "abc", ""])
def test_setfix_a_database_port_out_of_range_is_refused_at_load(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, port: str
) -> None:
    """99999 was taken by `parley config` and crashed run, doctor and db upgrade (OverflowError,
    a traceback); abc was the bare line "invalid literal for int() with base 10: 'abc'"."""
    url = f"postgresql://postgres:s3cretpw@127.0.0.1:{port}/parley"
    assert _refused(capsys, monkeypatch, PARLEY_DATABASE__URL=url) == (
        "invalid setting PARLEY_DATABASE__URL: the port after the host is not a number from 1 "
        "to 65535"
    )


@pytest.mark.parametrize("query", ["host=db:99999", "host=db1,db2&port=5432,0", "port=x"])
def test_setfix_a_port_in_the_host_or_port_parameter_is_checked_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    url = f"postgresql://postgres:s3cretpw@/parley?{query}"
    assert _refused(capsys, monkeypatch, PARLEY_DATABASE__URL=url) == (
        "invalid setting PARLEY_DATABASE__URL: the port in the URL's host or port parameter is "
        "not a number from 1 to 65535"
    )


def test_setfix_a_database_port_out_of_range_stops_doctor_in_one_line(tmp_path: Path) -> None:
    url = "postgresql://postgres:s3cretpw@127.0.0.1:99999/parley"
    status, err = _parley(tmp_path, "doctor", env={"PARLEY_DATABASE__URL": url})
    assert status == 2, err
    assert err.startswith("parley: error: invalid setting PARLEY_DATABASE__URL: the port ")
    assert err.count("\n") == 1


# --- redis.url's database number --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/x", "/O", "/l2", "/1/2"])
def test_setfix_a_redis_database_that_is_no_number_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """redis-py's parse_url uses database 0 for a path that is no number: a typo put two bots
    in one keyspace without a word (/12 read as 12 from /1/2)."""
    err = _refused(capsys, monkeypatch, PARLEY_REDIS__URL=f"redis://:s3cretpw@127.0.0.1:6379{path}")
    assert err.startswith("invalid setting PARLEY_REDIS__URL: the database number after the ")
    assert "s3cretpw" not in err


@pytest.mark.parametrize(
    "url", ["redis://h:6379/15", "redis://h:6379/", "redis://h:6379", "rediss://h/x?db=2"]
)
def test_setfix_a_redis_database_number_or_none_is_taken(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("PARLEY_REDIS__URL", url)
    assert main(["config"]) == 0, capsys.readouterr().err


# --- an in-memory SQLite database -------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite://",
        "sqlite://",
        "sqlite+aiosqlite:///file::memory:?uri=true",
        "sqlite+aiosqlite:///file:parley?mode=memory&uri=true",
    ],
)
def test_setfix_an_in_memory_sqlite_database_is_refused_at_load(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """Each pooled connection got an empty database of its own: doctor said all was well and
    `parley run` failed with "no such table: handoff_states", exit 3 (sqlite+aiosqlite://:
    doctor printed "SQLite None reachable")."""
    err = _refused(capsys, monkeypatch, PARLEY_DATABASE__URL=url)
    assert err == (
        "invalid setting PARLEY_DATABASE__URL: an in-memory SQLite database cannot be shared by "
        "Parley's connections (each would open an empty one of its own); use "
        "sqlite+aiosqlite:///PATH, a file"
    )


def test_setfix_run_refuses_an_in_memory_database_in_one_line(tmp_path: Path) -> None:
    env = {"PARLEY_DATABASE__URL": "sqlite+aiosqlite:///:memory:"}
    status, err = _parley(tmp_path, "run", env=env)
    assert status == 2, err
    assert err.startswith("parley: error: invalid setting PARLEY_DATABASE__URL: an in-memory ")
    assert err.count("\n") == 1
