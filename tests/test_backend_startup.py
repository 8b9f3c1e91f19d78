"""A model server that is still starting is waited for (with a line at each try) instead of
ending start-up at once; one that never comes is one error after `backend.startup_wait_s`."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from bot.app import Parley
from bot.errors import BackendUnavailable
from bot.settings import load_settings
from tests.slow_model import MODEL, SlowModel


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(tmp_path: Path, port: int, wait_s: float) -> object:
    return load_settings(
        None,
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/p.db"},
        backend={
            "kind": "openai",
            "base_url": f"http://127.0.0.1:{port}",
            "model": MODEL,
            "startup_wait_s": wait_s,
        },
    )


async def test_a_server_that_comes_up_late_is_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()
    up = asyncio.Event()
    done = asyncio.Event()

    async def late_server() -> None:
        await asyncio.sleep(1.5)  # the server is still loading its model
        async with SlowModel().serving(port):
            up.set()
            await done.wait()

    server = asyncio.create_task(late_server())
    try:
        with caplog.at_level(logging.WARNING, logger="bot.app"):
            async with Parley(_settings(tmp_path, port, 60)) as app:  # type: ignore[arg-type]
                assert up.is_set()
                assert app.backend is not None and app.backend.capabilities.max_model_len == 4096
        assert "waiting for the model server" in caplog.text
    finally:
        done.set()
        await server


async def test_a_server_that_never_comes_ends_start_up(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable):
        async with Parley(_settings(tmp_path, _free_port(), 0)):  # type: ignore[arg-type]
            pass


async def test_a_server_that_accepts_and_never_answers_is_waited_for_like_one_starting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that accepts connections and answers nothing (still loading, or hung) ended
    start-up with one /v1/models ReadTimeout after the 30 s gap, whatever
    backend.startup_wait_s said, and without a second try. It is tried again within the wait,
    with a line at each try, then ends start-up as a server that never came."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        logged = caplog.at_level(logging.WARNING, logger="bot.app")
        with logged, pytest.raises(BackendUnavailable, match="/v1/models: ReadTimeout"):
            async with Parley(_settings(tmp_path, port, 12)):  # type: ignore[arg-type]
                pass
        assert "waiting for the model server" in caplog.text
        assert len(accepted) == 2  # tried again within the wait
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
