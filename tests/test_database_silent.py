"""A PostgreSQL that takes connections and never answers (a hung server, a half-open network
path): start-up and the command-line tools give up after `database.timeout_s` with one line,
exit status 3. They waited for the driver's own minute, whatever the setting said."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.processes import parley_env


@pytest.mark.parametrize(
    "command", [["db", "current"], ["db", "upgrade"], ["kb", "list"], ["run"]], ids=" ".join
)
async def test_a_silent_database_is_one_line_after_the_timeout(
    tmp_path: Path, command: list[str]
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = {
        "PARLEY_DATABASE__URL": f"postgresql://parley@127.0.0.1:{port}/parley",
        "PARLEY_DATABASE__TIMEOUT_S": "2",
        "PARLEY_ADAPTERS": "support",
    }
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", *command,
            cwd=tmp_path, env=parley_env(tmp_path, env), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(50):  # the driver's own limit is 60 s
            _, err = await process.communicate()
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert accepted  # it did connect
    assert process.returncode == 3
    assert err.decode() == (
        "parley: error: the database did not answer within 2 s (database.timeout_s)\n"
    )
