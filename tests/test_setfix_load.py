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


# --- database.url's parameters (asyncpg) ------------------------------------------------------

PG = "postgresql://postgres:s3cretpw@127.0.0.1:5432/parley"


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("sslmod=require", "sslmod: not a URL parameter asyncpg takes; it takes "),
        ("foo=bar", "foo: not a URL parameter asyncpg takes"),
        ("prepared_statement_cache_size=abc", "prepared_statement_cache_size: not a whole number"),
        ("command_timeout=x", "command_timeout: not a number of seconds above 0"),
        ("command_timeout=nan", "command_timeout: not a number of seconds above 0"),
        ("sslmode=requir", "sslmode: not one of disable, allow, prefer, require"),
        ("ssl=true", "ssl: not one of disable, allow, prefer, require"),
        ("target_session_attrs=master", "target_session_attrs: not one of any, primary"),
        ("ssl=require&ssl=disable", "ssl: given more than once in the URL"),
        # asyncpg's, but a text cannot give it: TypeError at connect.
        ("timeout=5", "timeout: an asyncpg argument a URL cannot give"),
        ("statement_cache_size=0", "statement_cache_size: an asyncpg argument a URL cannot give"),
    ],
)
def test_setfix_an_unknown_or_unreadable_url_parameter_is_refused_at_load(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, query: str, says: str
) -> None:
    """Every query parameter but libpq's was passed to asyncpg.connect() as a keyword: a
    typo (sslmod) or an unreadable value failed each command at the first connection with an
    80-line traceback, exit 1, after `parley config` had taken it."""
    err = _refused(capsys, monkeypatch, PARLEY_DATABASE__URL=f"{PG}?{query}")
    assert err.startswith("invalid setting PARLEY_DATABASE__URL: ") and says in err, err
    assert "s3cretpw" not in err


@pytest.mark.parametrize("command", [("run",), ("doctor",), ("db", "upgrade")])
def test_setfix_a_mistyped_url_parameter_stops_every_command_in_one_line(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    status, err = _parley(tmp_path, *command, env={"PARLEY_DATABASE__URL": f"{PG}?sslmod=require"})
    assert status == 2, err
    assert err.startswith("parley: error: invalid setting PARLEY_DATABASE__URL: sslmod: ")
    assert err.count("\n") == 1 and "s3cretpw" not in err


def test_setfix_the_url_parameters_asyncpg_takes_are_used(
    tmp_path: Path, postgres_url: str
) -> None:
    import inspect

    import asyncpg

    from bot.settings import _asyncpg_parameters

    taken, _ = _asyncpg_parameters()
    # asyncpg's public signature; prepared_statement_cache_size is SQLAlchemy's dialect's.
    assert taken - {"prepared_statement_cache_size"} <= set(
        inspect.signature(asyncpg.connect).parameters
    )
    query = "sslmode=disable&command_timeout=5&prepared_statement_cache_size=0"
    query += "&target_session_attrs=any"
    url = postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1) + f"?{query}"
    status, err = _parley(tmp_path, "db", "upgrade", env={"PARLEY_DATABASE__URL": url})
    assert (status, err) == (0, "")


def test_setfix_a_parameter_the_settings_miss_is_still_one_line_at_connect(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last resort: what asyncpg's connect() refuses for its arguments (a TypeError, a
    ValueError) is one line, exit 2, from every command, and one problem of `parley doctor`.
    The settings here are changed after they loaded, as a parameter they do not know of."""
    from pydantic import SecretStr

    from bot.settings import Settings, load_settings

    def loaded(config_file: Path | None = None, **overrides: object) -> Settings:
        settings = load_settings(config_file, **overrides)
        settings.database.url = SecretStr(f"{PG.replace('://', '+asyncpg://')}?sslmod=require")
        return settings

    monkeypatch.setattr("bot.settings.load_settings", loaded)
    said = (
        "database.url: its driver cannot connect with the URL's parameters: TypeError: "
        "connect() got an unexpected keyword argument 'sslmod'"
    )
    assert main(["db", "upgrade"]) == 2
    assert capsys.readouterr().err == f"parley: error: {said}\n"
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"[PROBLEM] database: PostgreSQL not usable: {said}\n" in out
    assert "s3cretpw" not in out


# --- database.url's parameters (SQLite) -------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("timeout=s3cretval", "timeout: not a number of seconds from 0 to 2147483"),
        ("timeout=nan", "timeout: not a number of seconds from 0 to 2147483"),
        ("timeout=1&timeout=2", "timeout: given more than once in the URL"),
        ("foo=s3cretval", "foo: not a URL parameter SQLite takes; it takes cached_statements, "),
        ("check_same_thread=s3cretval", "check_same_thread: not true or false"),
        ("cached_statements=-1", "cached_statements: not a whole number from 0 to 2147483647"),
        ("isolation_level=s3cretval", "isolation_level: an SQLite driver argument Parley needs"),
        ("detect_types=1", "detect_types: an SQLite driver argument Parley needs"),
        # SQLite's URI parameters, dropped unread without uri=true (the file opened for
        # writing), and part of the file's name with uri=true on a plain path.
        ("mode=ro", "mode: an SQLite URI parameter, read only in a URI: "),
        ("uri=true&mode=ro&cache=shared", "cache, mode: SQLite URI parameters, read only in a URI"),
        ("uri=s3cretval", "uri: not true or false"),
    ],
)
def test_setfix_an_unknown_or_unreadable_sqlite_url_parameter_is_refused_at_load(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    query: str,
    says: str,
) -> None:
    """timeout=abc passed `parley config` and was a ValueError traceback from every command
    (SQLAlchemy's dialect reads it when the engine is made); a name the dialect does not know
    (foo, or mode without uri=true) was dropped without a word."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}?{query}"
    err = _refused(capsys, monkeypatch, PARLEY_DATABASE__URL=url)
    assert err.startswith("invalid setting PARLEY_DATABASE__URL: ") and says in err, err
    assert "s3cretval" not in err


@pytest.mark.parametrize(
    ("database", "says"),
    [
        ("file:{folder}/parley.db", "a database given as file:PATH is an SQLite URI: add uri=true"),
        ("file:{folder}/parley.db?uri=true&mode=s3cretval", "mode: not one of ro, rw, rwc"),
        (
            "file:{folder}/parley.db?uri=true&nolock=s3cretval",
            "nolock: not one of 1, 0, yes, no, true, false, on, off",
        ),
    ],
)
def test_setfix_an_sqlite_uri_parley_cannot_open_is_refused_at_load(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    database: str,
    says: str,
) -> None:
    """Without uri=true the dialect opened a file named "file:..." under the working folder;
    a mode SQLite does not know failed each command at its first connection."""
    url = "sqlite+aiosqlite:///" + database.format(folder=tmp_path)
    err = _refused(capsys, monkeypatch, PARLEY_DATABASE__URL=url)
    assert err == f"invalid setting PARLEY_DATABASE__URL: {says}", err


def test_setfix_a_mistyped_sqlite_url_parameter_stops_a_command_in_one_line(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}?timeout=s3cretval"
    status, err = _parley(tmp_path, "db", "upgrade", env={"PARLEY_DATABASE__URL": url})
    assert status == 2, err
    assert err == (
        "parley: error: invalid setting PARLEY_DATABASE__URL: timeout: not a number of seconds "
        "from 0 to 2147483\n"
    )


@pytest.mark.parametrize(
    "database",
    [
        "{folder}/parley.db?timeout=2.5&check_same_thread=false&cached_statements=16&uri=no",
        "file:{folder}/parley.db?uri=true&mode=rwc&cache=private&psow=1",
    ],
)
def test_setfix_the_url_parameters_sqlite_takes_are_used(tmp_path: Path, database: str) -> None:
    url = "sqlite+aiosqlite:///" + database.format(folder=tmp_path)
    status, err = _parley(tmp_path, "db", "upgrade", env={"PARLEY_DATABASE__URL": url})
    assert (status, err) == (0, "")
    assert (tmp_path / "parley.db").is_file()


async def test_setfix_an_sqlite_urls_timeout_is_its_busy_timeout(tmp_path: Path) -> None:
    """Every connection set PRAGMA busy_timeout=15000 after sqlite3.connect() had made the
    URL's timeout its busy timeout: ?timeout=2 was taken and did nothing."""
    from sqlalchemy import text

    from bot.storage.database import create_engine

    for query, busy_ms in (("?timeout=2", 2000), ("", 15000)):
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}{query}")
        try:
            async with engine.connect() as conn:
                assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == busy_ms
        finally:
            await engine.dispose()


def test_setfix_an_sqlite_parameter_that_bypassed_the_settings_is_one_line(
    tmp_path: Path,
) -> None:
    """The last resort, for a URL that did not come through the settings: the engine refuses
    it with the settings' line instead of SQLAlchemy's ValueError (which showed the value)."""
    from bot.errors import ConfigError
    from bot.storage.database import create_engine

    with pytest.raises(ConfigError) as refused:
        create_engine(f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}?timeout=s3cretval")
    assert str(refused.value) == (
        "database.url: timeout: not a number of seconds from 0 to 2147483"
    )


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


@pytest.mark.parametrize(
    "host",
    [
        "/cloudsql/my-project:europe-west1:main-db",  # Cloud SQL's socket folder
        "/var/run/postgresql",
        "::ffff:127.0.0.1",
        "2001:db8::abcd",
        "db.internal:5433",
    ],
)
def test_a_socket_folder_or_an_ipv6_address_in_the_host_parameter_is_a_host(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    """The port check split every host= value at its last colon: Cloud SQL's socket folder
    (/cloudsql/PROJECT:REGION:INSTANCE) and IPv6 addresses, which connect, were refused as
    bad ports (a review of the check). Only a host name or IPv4 address is split, as
    SQLAlchemy splits it."""
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"postgresql://postgres@/parley?host={host}")
    assert main(["config"]) == 0, capsys.readouterr().err


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


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("?foo=bar", "foo: not a URL parameter Parley's Redis client takes; it takes "
         "client_name, db, "),
        ("?socket_timeout=60", "socket_timeout: Parley sets this itself; use "
         "redis.socket_timeout_s"),
        ("?max_connections=3", "max_connections: Parley sets this itself; use "
         "redis.max_connections"),
        ("?health_check_interval=0", "health_check_interval: Parley sets this itself; remove "),
        ("?ssl_cert_reqs=none", "ssl_cert_reqs: a TLS option, for a rediss:// URL only"),
        ("?protocol=3", "protocol: Parley sets this itself; remove "),
    ],
)  # fmt: skip
def test_redis_url_parameters_are_refused_unless_the_client_takes_them_from_a_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, query: str, said: str
) -> None:
    """redis-py hands every query parameter to its connections, over Parley's values: an
    unknown name was a TypeError traceback at the first command (`parley doctor` exit 1),
    and ?socket_timeout=60 silently replaced redis.socket_timeout_s (the settings fixer's
    report)."""
    url = f"redis://:s3cretpw@127.0.0.1:6379/15{query}"
    err = _refused(capsys, monkeypatch, PARLEY_REDIS__URL=url)
    assert err.startswith(f"invalid setting PARLEY_REDIS__URL: {said}"), err
    assert "s3cretpw" not in err


@pytest.mark.parametrize(
    "url",
    [
        "unix:///var/run/redis/redis.sock?db=0&password=s3cretpw",  # redis-py's own example
        "redis://h/0?username=u&password=s3cretpw",
        "redis://h/9?client_name=parley-w1",
        "rediss://h/0?ssl_password=s3cretpw&ssl_keyfile=/k.pem&ssl_certfile=/c.pem",
        "rediss://h/0?ssl_min_version=3&ssl_cert_reqs=required&ssl_ca_certs=/ca.pem",
    ],
)
def test_redis_url_parameters_that_worked_before_still_do(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """A review of the parameter check: these connect with redis-py and were refused."""
    monkeypatch.setenv("PARLEY_REDIS__URL", url)
    assert main(["config"]) == 0, capsys.readouterr().err
    assert "s3cretpw" not in capsys.readouterr().out


def test_an_unknown_redis_url_parameter_stops_doctor_in_one_line(tmp_path: Path) -> None:
    url = "redis://:s3cretpw@127.0.0.1:6379/15?foo=bar"
    status, err = _parley(tmp_path, "doctor", env={"PARLEY_REDIS__URL": url})
    assert status == 2, err
    assert err.startswith("parley: error: invalid setting PARLEY_REDIS__URL: foo: ")
    assert err.count("\n") == 1 and "s3cretpw" not in err


async def test_a_redis_url_with_a_database_parameter_reaches_that_database(
    redis_url: str,
) -> None:
    """The parameters still taken work: ?db=N is the database redis-py uses."""
    from bot.settings import RedisSettings
    from bot.storage.redis_client import client_for

    base = redis_url.rsplit("/", 1)[0]
    client = client_for(RedisSettings(url=f"{base}/0?db=14"))  # type: ignore[arg-type]
    assert client is not None
    try:
        await client.set("parley-test:db-parameter", "1", ex=5)
        info = await client.client_info()
        assert info["db"] == 14
    finally:
        await client.aclose()


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
