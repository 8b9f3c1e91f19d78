"""A model server that is still starting is waited for (with a line at each try) instead of
ending start-up at once; one that never comes is one error after `backend.startup_wait_s`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backends.base import estimate_tokens
from bot.app import Parley
from bot.errors import BackendError, BackendUnavailable, ConfigError
from bot.settings import load_settings
from tests.local_server import serving
from tests.ports import free_port
from tests.slow_model import MODEL, SlowModel


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
    port = free_port()
    listening = asyncio.Event()
    done = asyncio.Event()

    async def late_server() -> None:
        await asyncio.sleep(1.5)  # the server is still loading its model
        # Set before the socket listens: Parley may connect and finish starting before
        # serving() has seen uvicorn's started flag, so a flag set inside would race.
        listening.set()
        async with SlowModel().serving(port):
            await done.wait()

    server = asyncio.create_task(late_server())
    try:
        with caplog.at_level(logging.WARNING, logger="bot.app"):
            async with Parley(_settings(tmp_path, port, 60)) as app:  # type: ignore[arg-type]
                assert listening.is_set()
                assert app.backend is not None and app.backend.capabilities.max_model_len == 4096
        assert "waiting for the model server" in caplog.text
    finally:
        done.set()
        await server


async def test_a_server_that_never_comes_ends_start_up(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable):
        async with Parley(_settings(tmp_path, free_port(), 0)):  # type: ignore[arg-type]
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


async def test_a_model_folder_that_is_not_there_stops_start_up_at_once(tmp_path: Path) -> None:
    """`backend.kind = vllm` with a model path that does not exist was taken by vLLM for a
    hub repository name and waited for through the whole start-up wait (120 s by default),
    each try failing with "Repo id must be in the form ..." (an operator's review)."""
    settings = load_settings(
        None,
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/p.db"},
        backend={"kind": "vllm", "model": str(tmp_path / "models" / "Qwen"), "startup_wait_s": 60},
    )
    async with asyncio.timeout(30):  # a guard: the wait would be 60 s
        with pytest.raises(ConfigError, match=r"backend\.model: no model folder .*models/Qwen"):
            async with Parley(settings):  # type: ignore[arg-type]
                pass


async def test_a_tokenizer_folder_that_is_not_there_is_named_as_such(tmp_path: Path) -> None:
    """transformers' answer was about hub repository ids ("Repo id must be in the form")."""
    async with SlowModel().serving() as url:
        settings = load_settings(
            None,
            database={"url": f"sqlite+aiosqlite:///{tmp_path}/p.db"},
            backend={
                "kind": "openai",
                "base_url": url,
                "model": MODEL,
                "tokenizer": "/models/qwen",
            },
        )
        with pytest.raises(ConfigError, match=r"backend\.tokenizer: no folder '/models/qwen'"):
            async with Parley(settings):  # type: ignore[arg-type]
                pass


async def test_a_tokenizer_folder_that_is_not_there_is_not_waited_for(tmp_path: Path) -> None:
    """docs/cli.md: a tokenizer folder that holds none (or transformers missing) is not
    waited for. The tokenizer was loaded only once the model server answered: with the
    server still down, start-up waited the whole backend.startup_wait_s and ended as an
    unreachable server (exit 3), the setting never named."""
    settings = load_settings(
        None,
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/p.db"},
        backend={
            "kind": "openai",
            "base_url": f"http://127.0.0.1:{free_port()}",
            "model": MODEL,
            "tokenizer": "/models/qwen",
            "startup_wait_s": 60,
        },
    )
    async with asyncio.timeout(30):  # a guard: the wait would be 60 s
        with pytest.raises(ConfigError, match=r"backend\.tokenizer: no folder '/models/qwen'"):
            async with Parley(settings):  # type: ignore[arg-type]
                pass


async def test_a_refused_api_key_names_the_setting(tmp_path: Path) -> None:
    async def refuse(request: Request) -> Response:
        return JSONResponse({"error": {"message": "Invalid API key", "code": 401}}, 401)

    app = Starlette(routes=[Route("/v1/models", refuse)])
    async with serving(app) as port:
        settings = load_settings(
            None,
            database={"url": f"sqlite+aiosqlite:///{tmp_path}/p.db"},
            backend={"kind": "openai", "base_url": f"http://127.0.0.1:{port}", "model": MODEL,
                     "api_key": "sk-wrong"},
        )  # fmt: skip
        with pytest.raises(BackendError, match=r"401.*PARLEY_BACKEND__API_KEY") as refused:
            async with Parley(settings):  # type: ignore[arg-type]
                pass
    assert "sk-wrong" not in str(refused.value)


async def test_a_fallback_of_another_model_does_not_count_with_the_primarys_tokenizer(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """backend.tokenizer holds the primary model's files, and a fallback took every setting it
    does not name from [backend]: one serving another model counted its tokens with the
    primary's tokenizer while the primary was down, and called them exact. It asks its own
    server (this one has no /tokenize: the estimate)."""
    async with SlowModel().serving() as url:
        settings = load_settings(
            None,
            database={"url": f"sqlite+aiosqlite:///{tmp_path}/p.db"},
            backend={
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{free_port()}",  # the primary is down
                "model": "primary-model",
                "tokenizer": str(tiny_model_dir),
                "startup_wait_s": 0,
                "fallbacks": [{"model": MODEL, "base_url": url}],
            },
        )
        async with Parley(settings) as app:  # type: ignore[arg-type]
            assert app.backend is not None
            assert app.backend.capabilities.exact_token_counts is False
            text = "The quick brown fox jumps over the lazy dog"
            assert await app.backend.count_tokens([text]) == [estimate_tokens(text)]
