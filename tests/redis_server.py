"""A private redis-server that a test can kill and restart (the shared one must stay up)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator
from typing import NoReturn

import pytest
from redis.asyncio import Redis

from tests.ports import free_port

START_LIMIT_S = 10.0
POLL_STEP_S = 0.05


class PrivateRedis:
    """A throwaway redis-server (no persistence) that a test can kill and start again."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await self._wait_for_ping()

    async def _wait_for_ping(self) -> None:
        """Until the server answers as this process (INFO's process_id): on a port another
        process holds (a test file running beside this one, pytest-xdist), redis-server
        exits at once, and the other server's PONG was taken for this one's, the test then
        killing and freezing a server that was never there while it used the other."""
        process = self._process
        assert process is not None
        client = Redis.from_url(self.url, socket_timeout=1)
        try:
            for _ in range(int(START_LIMIT_S / POLL_STEP_S)):
                if process.returncode is not None:
                    pytest.fail(
                        f"private redis-server exited ({process.returncode}) at start: port "
                        f"{self.port} is taken by another process"
                    )
                try:
                    answering = (await client.info("server"))["process_id"]
                except Exception:  # refused until the server listens
                    answering = None
                if answering == process.pid:
                    return
                await asyncio.sleep(POLL_STEP_S)
        finally:
            await client.aclose()
        pytest.fail(f"private redis-server did not answer on port {self.port} within "
                    f"{START_LIMIT_S}s (another process's may answer there)")  # fmt: skip

    def freeze(self) -> None:
        """SIGSTOP: the server answers nothing and closes nothing, as a Redis that hangs or a
        network that drops every packet (`thaw` lets it go on)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL, as in a crash: no clean shutdown, connections just drop."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        self._process = None


def _missing_binary() -> NoReturn:
    reason = "redis-server is not on PATH; the outage tests start a private one"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI requires {reason}", pytrace=False)
    pytest.skip(reason)


def redis_binary() -> str:
    """The redis-server a test starts its own Redis with (fails under CI when missing)."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing_binary()
    return binary


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    private = PrivateRedis(redis_binary(), free_port())
    await private.start()
    yield private
    await private.kill()
