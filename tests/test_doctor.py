"""`parley doctor`: one line per check, a PROBLEM line for each thing that is wrong."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
import uuid
from pathlib import Path

import pytest
from sqlalchemy import make_url

from bot.cli import main
from bot.doctor import run_checks
from bot.settings import load_settings
from bot.storage.database import create_oneoff_engine
from tests.fixtures_vllm import SERVED_MODEL
from tests.ports import free_port
from tests.telegram_api import TOKEN, FakeBotApi


def _doctor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **env: str
) -> tuple[int, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["doctor"])
    return code, capsys.readouterr().out


def test_embedded_defaults_have_no_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/d.db")
    assert main(["db", "upgrade"]) == 0  # the file is there, as after a first run
    capsys.readouterr()
    code, out = _doctor(monkeypatch, capsys)
    assert code == 0, out
    assert f"[ok] database: SQLite {tmp_path}/d.db reachable" in out
    assert "[ok] adapter console: nothing to check" in out
    assert "backend: none configured" in out
    assert out.rstrip().endswith("no problems found")


def test_an_sqlite_database_that_takes_no_writes_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file this user may not write (made by another user, a read-only mount) answers
    reads: doctor said "no problems found" and `parley run` then failed at its first write.
    Read-only here as SQLite's own `mode=ro` makes it; doctor writes nothing."""
    path = tmp_path / "d.db"
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{path}")
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    with contextlib.closing(sqlite3.connect(path)) as worker:  # WAL, as a worker leaves it
        worker.execute("PRAGMA journal_mode=WAL")
    written = path.read_bytes()
    read_only = f"sqlite+aiosqlite:///file:{path}?uri=true&mode=ro"
    code, out = _doctor(monkeypatch, capsys, PARLEY_DATABASE__URL=read_only)
    assert code == 1, out
    assert (
        f"[PROBLEM] database: SQLite file:{path} takes no writes: the database {path} is "
        "read-only (database.url opens it with mode=ro)" in out
    )
    code, out = _doctor(monkeypatch, capsys, PARLEY_DATABASE__URL=f"sqlite+aiosqlite:///{path}")
    assert code == 0, out  # a file it may write: no problem, and nothing written
    assert path.read_bytes() == written


async def _run_sql(url: str, *statements: str) -> None:
    engine = create_oneoff_engine(url)
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)
            await conn.commit()
    finally:
        await engine.dispose()


@pytest.mark.postgres
def test_a_postgres_user_without_grants_on_the_tables_is_a_problem(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The usual split: `parley db upgrade` as the role that owns the tables, the workers as
    another. Without its grants doctor said "no problems found" and `parley run` failed at
    its first write (permission denied for table users); with read access alone too."""
    monkeypatch.setenv("PARLEY_DATABASE__URL", postgres_url)
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    role = f"parley_reader_{uuid.uuid4().hex[:8]}"
    url = make_url(postgres_url)
    try:
        asyncio.run(
            _run_sql(
                postgres_url,
                f"CREATE ROLE {role} LOGIN",
                f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
            )
        )
        reader = url.set(username=role).render_as_string(hide_password=False)
        code, out = _doctor(monkeypatch, capsys, PARLEY_DATABASE__URL=reader)
        assert code == 1, out
        assert "[ok] database: PostgreSQL reachable" in out
        assert (
            "[PROBLEM] database: PostgreSQL takes no writes: this user may not write "
            "chat_prefs, conversations, handoff_events, handoff_states and 18 more" in out
        ), out
        asyncio.run(
            _run_sql(
                postgres_url,
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
                f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
            )
        )
        code, out = _doctor(monkeypatch, capsys, PARLEY_DATABASE__URL=reader)
        assert code == 0, out
        asyncio.run(
            _run_sql(postgres_url, f"ALTER ROLE {role} SET default_transaction_read_only = on")
        )
        code, out = _doctor(monkeypatch, capsys, PARLEY_DATABASE__URL=reader)
        assert "takes no writes: the server is read-only" in out, out
    finally:
        asyncio.run(_run_sql(postgres_url, f"DROP OWNED BY {role}", f"DROP ROLE IF EXISTS {role}"))


def test_doctor_creates_no_database_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A check creates nothing: it made the file and its folder, so a mistyped path passed
    as "reachable"."""
    typo = tmp_path / "no-such-folder" / "a.db"
    code, out = _doctor(monkeypatch, capsys, PARLEY_DATABASE__URL=f"sqlite+aiosqlite:///{typo}")
    assert code == 0, out
    assert (
        f"[ok] database: SQLite {typo} does not exist yet; parley run creates it, "
        "with its folder" in out
    )
    assert not typo.parent.exists()


def test_unreachable_server_and_outdated_schema_are_problems(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _doctor(
        monkeypatch,
        capsys,
        PARLEY_DATABASE__URL=postgres_url,
        PARLEY_BACKEND__KIND="openai",
        PARLEY_BACKEND__BASE_URL=f"http://127.0.0.1:{free_port()}",
        PARLEY_BACKEND__MODEL="m",
        PARLEY_BACKEND__TIMEOUTS__CONNECT_S="1",
    )
    assert code == 1
    assert "[PROBLEM] database schema:" in out and "parley db upgrade" in out
    assert "[PROBLEM] backend:" in out
    assert "Traceback" not in out


def test_a_server_database_that_migrates_itself_on_start_is_no_problem(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With `database.auto_migrate = true` `parley run` migrates PostgreSQL itself; doctor
    called the old schema a problem (exit 1) for SQLite files only (a helper's walkthrough)."""
    code, out = _doctor(
        monkeypatch, capsys, PARLEY_DATABASE__URL=postgres_url, PARLEY_DATABASE__AUTO_MIGRATE="true"
    )
    assert code == 0, out
    assert "[ok] database schema:" in out and "(migrated on start)" in out


@pytest.mark.vllm
def test_unknown_model_and_small_context_are_named(
    vllm_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path}/d.db"
    common = {
        "PARLEY_DATABASE__URL": db,
        "PARLEY_BACKEND__KIND": "openai",
        "PARLEY_BACKEND__BASE_URL": vllm_server,
    }
    code, out = _doctor(monkeypatch, capsys, **common, PARLEY_BACKEND__MODEL="no-such-model")
    assert code == 1 and "no-such-model" in out and SERVED_MODEL in out
    code, out = _doctor(
        monkeypatch,
        capsys,
        **common,
        PARLEY_BACKEND__MODEL=SERVED_MODEL,
        PARLEY_CONVERSATION__CONTEXT_TOKENS="4000",
    )
    assert code == 1
    assert "context 1024 tokens" in out
    # What start-up would stop on, said as such: doctor called it a capped budget, and then
    # `parley run` exited 2 on it (an operator's review).
    assert (
        "[PROBLEM] backend: PARLEY_BACKEND__MAX_TOKENS: 512 reply tokens leave too little of "
        "the model's 1024-token context for the conversation; parley run stops on it"
    ) in out
    code, out = _doctor(
        monkeypatch,
        capsys,
        **common,
        PARLEY_BACKEND__MODEL=SERVED_MODEL,
        PARLEY_BACKEND__MAX_TOKENS="64",
        PARLEY_CONVERSATION__CONTEXT_TOKENS="4000",
    )
    assert code == 1
    assert "[PROBLEM] backend: context length 1024 leaves the history " in out
    assert "the history budget will be capped" in out


@pytest.mark.parametrize(("token", "ok"), [(TOKEN, True), ("123:garbage", False)])
async def test_doctor_checks_the_telegram_token_with_get_me(
    tmp_path: Path, token: str, ok: bool
) -> None:
    api = FakeBotApi()
    async with api.serving() as base_url:
        settings = load_settings(
            None,
            adapters=["telegram"],
            database={"url": f"sqlite+aiosqlite:///{tmp_path}/d.db"},
            telegram={"token": token, "base_url": base_url},
        )
        out = io.StringIO()
        problems = await run_checks(settings, out=out)
    expected = "[ok] adapter telegram: bot @parley_bot" if ok else "[PROBLEM] adapter telegram:"
    assert expected in out.getvalue()
    assert bool(problems) is not ok
    assert token not in out.getvalue()
    assert [c.method for c in api.calls] == ["getMe"]


def test_doctor_prints_where_the_embedded_database_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PARLEY_DATABASE__URL", raising=False)
    code, out = _doctor(monkeypatch, capsys, PARLEY_HOME=str(tmp_path / "data"))
    assert code == 0, out
    assert f"[ok] database: SQLite {tmp_path / 'data' / 'parley.db'} does not exist yet" in out


async def test_a_database_that_never_answers_is_a_problem_within_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that takes the connection and says nothing (a firewall, a hung proxy): doctor
    names it after CONNECT_WAIT_S instead of waiting for the driver's own 60 s."""
    silent = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    monkeypatch.setattr("bot.doctor.CONNECT_WAIT_S", 0.5)
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"postgresql+asyncpg://u@127.0.0.1:{port}/db")
    out = io.StringIO()
    async with silent, asyncio.timeout(30):  # far above the wait: proves it was not 60 s
        problems = await run_checks(load_settings(), out=out)
    assert any("database: PostgreSQL did not answer within 0.5 s" in p for p in problems)


def test_a_folder_doctor_may_not_search_is_a_problem_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder on the way that this user may not search (mode 700, another owner): looking
    for the file raises PermissionError, which was a traceback-free but one-line exit 3 that
    skipped every other check. It is the database's PROBLEM line; the other checks run."""
    locked = tmp_path / "locked"
    real_exists = Path.exists

    def exists(self: Path, **kwargs: bool) -> bool:
        if self.is_relative_to(locked):
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    code, out = _doctor(
        monkeypatch, capsys, PARLEY_DATABASE__URL=f"sqlite+aiosqlite:///{locked}/x.db"
    )
    assert code == 1, out
    assert f"[PROBLEM] database: SQLite {locked}/x.db cannot be reached: Permission denied" in out
    assert "backend: none configured" in out  # the other checks ran
