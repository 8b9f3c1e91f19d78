"""`parley run` as a real process, for the tests and benchmarks that watch it as an operator
and a process manager do."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Generous bounds on how long a process may take to do what it must: a hang fails the test.
EXIT_WITHIN_S = 60.0


def parley_env(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """This process's environment without its PARLEY_* variables, plus `env`: an SQLite file
    and a home in tmp_path, no sample knowledge base."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return clean | {
        "PARLEY_HOME": str(tmp_path / "home"),
        "PARLEY_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path}/parley.db",
        "PARLEY_KNOWLEDGE__LOAD_SAMPLE": "false",
        "PYTHONPATH": str(ROOT),
        **env,
    }


@asynccontextmanager
async def parley_run(
    tmp_path: Path, env: dict[str, str], *, stdin: int | None = asyncio.subprocess.DEVNULL
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`parley run` in a process of its own, with only the given PARLEY_* settings."""
    clean = parley_env(tmp_path, env)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "run",
        cwd=tmp_path,
        env=clean,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str]:
    async with asyncio.timeout(EXIT_WITHIN_S):
        _, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()
