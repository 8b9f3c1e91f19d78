"""One conversation suite over every real backend: the in-process vLLM engine, vLLM's HTTP
server, and `transformers serve` (a second, independent implementation of the protocol), each
behind `build_resilient_backend` as the bot uses them.

`transformers serve` is started here on the tiny model; it lists no models until asked and
has no /tokenize, so its context length comes from the settings and token counts are
estimates. It does not refuse prompts over the model's context (it generates past
max_position_embeddings), so the context-length test skips it with that reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from backends.base import Backend, Chunk, GenerationRequest
from backends.factory import build_resilient_backend
from backends.openai_compat import OpenAICompatBackend
from backends.resilience import ResilientBackend
from backends.vllm_engine import VllmEngineBackend
from bot.errors import BackendTimeout, ContextTooLong
from bot.settings import BackendSettings
from bot.types import ChatMessage, Role
from tests.fixtures_vllm import SERVED_MODEL, require, stop_server, unavailable
from tests.ports import free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

KINDS = ["vllm-engine", "vllm-http", "transformers-serve"]
SYSTEM = ChatMessage(Role.SYSTEM, "You are a test bot.")
TRANSFORMERS_MAX_LEN = 2048  # the tiny model's max_position_embeddings


@pytest.fixture(scope="session")
def transformers_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`transformers serve` pinned to the tiny model on a free port; yields its base URL."""
    require("fastapi", "uvicorn")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    work = tmp_path_factory.mktemp("transformers-serve")
    # An empty hub cache: without one its /v1/models answers 500 offline.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(work / "hub")}
    (work / "hub").mkdir()
    command = [
        *_transformers_cli(),
        *("serve", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port)),
        *("--device", "cpu"),
    ]
    with (work / "server.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        _wait_healthy(process, base_url, work / "server.log")
        yield base_url
    finally:
        stop_server(process)


def _transformers_cli() -> list[str]:
    script = Path(sys.executable).with_name("transformers")
    if script.exists():
        return [str(script)]
    found = shutil.which("transformers")
    if found is None:
        unavailable("the `transformers` command (pip install 'transformers[serving]')")
    return [str(found)]


def _wait_healthy(process: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    for _ in range(240):
        if process.poll() is not None:
            unavailable(f"transformers serve exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        subprocess.run(["sleep", "0.5"], check=False)
    unavailable("transformers serve did not become healthy in 120 s")


def _settings(kind: str, request: pytest.FixtureRequest) -> BackendSettings:
    tiny = str(request.getfixturevalue("tiny_model_dir"))
    request.getfixturevalue("vllm_env")
    common = {"timeouts": {"first_token_s": 120, "gap_s": 60, "total_s": 300}}
    if kind == "vllm-engine":
        require("vllm")
        values = {"kind": "vllm", "model": tiny, "gpu_memory_utilization": 0.3}
        return BackendSettings.model_validate({**values, "enforce_eager": True, **common})
    if kind == "vllm-http":
        url = request.getfixturevalue("vllm_server")
        return BackendSettings.model_validate(
            {"kind": "openai", "base_url": url, "model": SERVED_MODEL, **common}
        )
    url = request.getfixturevalue("transformers_server")
    values = {"kind": "openai", "base_url": url, "model": tiny}
    return BackendSettings.model_validate(
        {**values, "max_model_len": TRANSFORMERS_MAX_LEN, **common}
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=KINDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[ResilientBackend]:
    built = build_resilient_backend(_settings(request.param, request))
    assert isinstance(built, ResilientBackend)
    await built.start()
    yield built
    await built.aclose()


def ask(*texts: str, max_tokens: int = 12) -> GenerationRequest:
    messages = [SYSTEM, *(ChatMessage(Role.USER, t) for t in texts)]
    return GenerationRequest(messages, max_tokens=max_tokens, temperature=1.0)


async def collect(backend: Backend, request: GenerationRequest) -> list[Chunk]:
    async with aclosing(backend.stream(request)) as chunks:
        return [chunk async for chunk in chunks]


async def test_streams_deltas_then_usage(backend: ResilientBackend) -> None:
    *deltas, last = await collect(backend, ask("hello world, tell me a story", max_tokens=16))
    assert len(deltas) >= 2 and all(c.text for c in deltas)
    assert last.usage is not None and 0 < last.usage.completion_tokens <= 16
    assert last.finish_reason in ("length", "stop")


async def test_multi_turn_conversations(backend: ResilientBackend) -> None:
    for opening in ("hello there", "what is the weather"):
        messages = [SYSTEM, ChatMessage(Role.USER, opening)]
        sizes = []
        for follow_up in ("and tomorrow?", "thanks"):
            chunks = await collect(backend, GenerationRequest(list(messages), max_tokens=8))
            assert chunks[-1].usage is not None
            sizes.append(chunks[-1].usage.prompt_tokens)
            reply = "".join(c.text for c in chunks)
            messages += [ChatMessage(Role.ASSISTANT, reply), ChatMessage(Role.USER, follow_up)]
        assert sizes[0] < sizes[1]  # each turn's prompt grows


async def test_concurrent_streams(backend: ResilientBackend) -> None:
    requests = [ask(f"question {n}", max_tokens=8) for n in range(6)]
    results = await asyncio.gather(*(collect(backend, r) for r in requests))
    assert all(chunks[-1].usage is not None for chunks in results)


async def test_context_too_long(backend: ResilientBackend, request: pytest.FixtureRequest) -> None:
    if "transformers-serve" in request.node.callspec.id:
        pytest.skip("transformers serve does not refuse prompts over the model's context")
    with pytest.raises(ContextTooLong):
        await collect(backend, ask("hello world " * 1500, max_tokens=8))


async def test_cancelling_stops_the_reply(backend: ResilientBackend) -> None:
    async with aclosing(backend.stream(ask("tell me everything", max_tokens=500))) as chunks:
        assert (await anext(chunks)).text
    await _no_requests_left(backend)
    after = await collect(backend, ask("still there?", max_tokens=4))
    assert after[-1].usage is not None  # the backend is usable after an abort


async def test_first_token_time_limit(backend: ResilientBackend) -> None:
    limits = backend.settings.timeouts.model_copy(update={"first_token_s": 1e-4})
    tight = backend.settings.model_copy(update={"timeouts": limits})
    inner = backend.inner
    if isinstance(inner, VllmEngineBackend):  # one engine per process: share the running one
        hurried: Backend = ResilientBackend(inner.with_settings(tight), tight)
    else:
        hurried = ResilientBackend(OpenAICompatBackend(tight), tight)
    with pytest.raises(BackendTimeout, match="first token"):
        await collect(hurried, ask("hello", max_tokens=8))
    await _no_requests_left(backend)
    if not isinstance(inner, VllmEngineBackend):
        await hurried.aclose()


async def _no_requests_left(backend: ResilientBackend) -> None:
    """For vLLM, poll (bounded) until the engine or server holds no request of ours."""
    engine = getattr(backend.inner, "engine", None)
    for _ in range(200):
        if engine is not None:
            if engine.get_num_unfinished_requests() == 0:
                return
        elif await _http_running(backend) == 0:
            return
        await asyncio.sleep(0.05)
    pytest.fail("the aborted request is still running")


async def _http_running(backend: ResilientBackend) -> float:
    base = getattr(backend.inner, "_base_url", "")
    async with httpx.AsyncClient(base_url=base) as http:
        response = await http.get("/metrics")
    if response.status_code != 200:  # transformers serve has no metrics to ask
        return 0.0
    lines = [ln for ln in response.text.splitlines() if ln.startswith("vllm:num_requests_running")]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)
