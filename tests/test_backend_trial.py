"""Trial of the model backends as an operator whose model server misbehaves: each test is a
defect found there, reproduced through `httpx.MockTransport` (the transport is the seam)
speaking as the named server does, and through Parley over SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import httpx
import pytest

from backends.base import Backend, Chunk, GenerationRequest
from backends.openai_compat import OpenAICompatBackend
from backends.resilience import ResilientBackend
from bot import phrases
from bot.app import Parley
from bot.errors import BackendTimeout, ReasoningTooLong
from bot.settings import BackendSettings, Settings
from bot.types import ChatMessage, ConversationKey, Incoming, Role, User
from tests.doubles import CollectingSink

MODEL = "served"
# A bound for the test itself: a turn that never ends fails the test instead of hanging it.
NEVER = 30.0

Respond = Callable[[httpx.Request], httpx.Response]


def events(*bodies: object) -> httpx.Response:
    text = "".join(f"data: {json.dumps(b)}\n\n" for b in bodies) + "data: [DONE]\n\n"
    return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})


def delta(text: str) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


FINISH = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


def server(chat: Respond) -> Respond:
    """A model server: /v1/models lists MODEL, no /tokenize, `chat` answers the chat."""

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": MODEL, "max_model_len": 2048}]})
        if request.url.path == "/tokenize":
            return httpx.Response(404)
        return chat(request)

    return respond


def backend_for(respond: Respond) -> OpenAICompatBackend:
    settings = BackendSettings.model_validate(
        {"kind": "openai", "base_url": "http://llm.test", "model": MODEL}
    )
    return OpenAICompatBackend(settings, transport=httpx.MockTransport(respond))


async def reply_of(backend: Backend, request: GenerationRequest) -> list[Chunk]:
    """Every chunk of one reply, read within the test's bound."""
    async with asyncio.timeout(NEVER), aclosing(backend.stream(request)) as chunks:
        return [c async for c in chunks]


# --- usage counts no model can have -----------------------------------------------------------


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 9, "completion_tokens": -5},
        {"prompt_tokens": -3, "completion_tokens": 2},
        {"prompt_tokens": 9, "completion_tokens": 3_000_000_000},
        {"prompt_tokens": 10**20, "completion_tokens": 2},
    ],
    ids=["negative-completion", "negative-prompt", "over-int32", "over-int64"],
)
async def test_usage_no_model_can_have_leaves_the_answer_recorded_once(
    usage: dict[str, int], database_url: str
) -> None:
    """A server (or a proxy in front of it) reports usage counts that cannot be: negative, or
    past what any column holds. They were taken as they came: a negative count raised out of
    the metrics' counters, a huge one out of the database, after the answer was shown; the
    user saw it with "[The reply was cut off.]", the answer was not recorded and the message was
    left pending, and a count of 10**20 spent the user's daily budget
    for the day. Such counts are dropped (the answer's tokens are counted here instead)."""
    reply = events(delta("Hi there"), FINISH, {"choices": [], "usage": usage})
    settings = Settings(
        database={"url": database_url},  # type: ignore[arg-type]
        budget={"user_daily_tokens": 10_000},  # type: ignore[arg-type]
    )
    async with Parley(settings, backend=backend_for(server(lambda _: reply))) as app:
        sink = CollectingSink()
        app.manager.attach("test", sink)
        key = ConversationKey("test", "chat-1")
        async with asyncio.timeout(NEVER):
            for number in (1, 2):
                message = Incoming(key, User("test", "u1"), f"hello {number}", f"m{number}")
                recorded = await app.manager.handle(message)
        rows = await app.store.history(recorded.conversation_id, 10)
    assert sink.replies[key] == ["Hi there", "Hi there"]
    assert [(r.role, r.content) for r in rows] == [
        (Role.USER, "hello 1"),
        (Role.ASSISTANT, "Hi there"),
        (Role.USER, "hello 2"),
        (Role.ASSISTANT, "Hi there"),
    ]
    assert all(0 <= r.token_count < 100 for r in rows)
    assert phrases.BUDGET_USED_UP not in sink.replies[key]


# --- a prompt too long, in the words of the servers operators run -----------------------------


@pytest.mark.parametrize(
    "error",
    [
        {  # llama.cpp's llama-server (since 2025)
            "code": 400,
            "message": "request (4476 tokens) exceeds the available context size (4096 tokens)",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 4476,
            "n_ctx": 4096,
        },
        {  # llama.cpp's llama-server, earlier
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "invalid_request_error",
        },
        {  # OpenAI's API, newer models
            "message": "Your input exceeds the context window of this model. "
            "Please adjust your input and try again.",
            "type": "invalid_request_error",
            "param": "input",
            "code": "context_length_exceeded",
        },
    ],
    ids=["llama.cpp", "llama.cpp-earlier", "openai-context-window"],
)
async def test_a_prompt_too_long_for_llama_cpp_or_openai_is_context_too_long(
    error: dict[str, object], tmp_path: object
) -> None:
    """Only vLLM's wording ("maximum context length", "max_model_len") was known: llama.cpp's
    400 for a conversation past its context (the `--ctx-size` an operator gave it), and
    OpenAI's `context_length_exceeded` in its newer wording, were taken for a refusal of
    the request. The user was told the model was not answering (not to send /reset), the
    conversation was never shrunk and tried again, every turn of that conversation failed,
    and each failure counted against the circuit breaker, which stopped every other
    conversation's answers too."""
    asked = 0

    def chat(_: httpx.Request) -> httpx.Response:
        nonlocal asked
        asked += 1
        return httpx.Response(400, json={"error": error})

    settings = Settings(database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"})  # type: ignore[arg-type]
    async with Parley(settings, backend=backend_for(server(chat))) as app:
        sink = CollectingSink()
        app.manager.attach("test", sink)
        key = ConversationKey("test", "chat-1")
        async with asyncio.timeout(NEVER):
            await app.manager.handle(Incoming(key, User("test", "u1"), "hello", "m1"))
    assert sink.replies[key] == [phrases.CONTEXT_TOO_LONG]
    assert asked == 2  # shrunk once and tried again, as for vLLM's wording


# --- a /tokenize that is not vLLM's ----------------------------------------------------------


def llama_cpp_tokenize(request: httpx.Request) -> httpx.Response:
    """llama-server's /tokenize: it reads `content`, and answers an empty list without it."""
    body = json.loads(request.content)
    text = body.get("content")
    return httpx.Response(200, json={"tokens": list(range(len(text.split()))) if text else []})


def tgi_tokenize(request: httpx.Request) -> httpx.Response:
    """Text Generation Inference's /tokenize: it wants `inputs` (axum's 422 without it)."""
    body = json.loads(request.content)
    if "inputs" not in body:
        return httpx.Response(
            422, text="Failed to deserialize the JSON body: missing field `inputs`"
        )
    return httpx.Response(200, json=[{"id": 1, "text": "a", "start": 0, "stop": 1}])


@pytest.mark.parametrize("tokenize", [llama_cpp_tokenize, tgi_tokenize], ids=["llama.cpp", "tgi"])
async def test_a_tokenize_that_is_not_vllm_s_gives_estimates(tokenize: Respond) -> None:
    """Parley asks /tokenize as vLLM's takes it (`prompt`, `messages`). llama.cpp's server
    has a /tokenize of its own, which reads `content` and answered {"tokens": []}: every
    message, and every conversation, counted 0 tokens ("exact" ones, said `parley doctor`),
    so the history was never trimmed to the context and the token budgets reserved nothing.
    Text Generation Inference's refuses the body (422), and Parley did not start at all
    against it. Such a server is one without vLLM's /tokenize: counts are estimated."""

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": MODEL}]})
        if request.url.path == "/tokenize":
            return tokenize(request)
        return events(delta("ok"), FINISH)

    backend = backend_for(respond)
    try:
        await backend.start()
        counts = await backend.count_tokens(["how long is this message, do you think?"])
        chat = await backend.count_chat_tokens([ChatMessage(Role.USER, "hello there, model")])
    finally:
        await backend.aclose()
    assert not backend.capabilities.exact_token_counts
    assert counts[0] > 0 and chat > 0


async def test_a_tokenize_that_does_not_answer_yet_is_waited_for(tmp_path: object) -> None:
    """A server still starting is waited for (docs/cli.md), one that answers nothing as well;
    so the start-up probe of /tokenize said, but a /tokenize that did not answer in time
    (a server whose /v1/models answered first) raised its time-out out of start-up, and
    Parley did not start. It is now waited for, like a /v1/models that answers nothing."""
    probes = 0

    def respond(request: httpx.Request) -> httpx.Response:
        nonlocal probes
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": MODEL}]})
        if request.url.path == "/tokenize":
            probes += 1
            if probes == 1:
                raise httpx.ReadTimeout("no answer yet", request=request)
            return httpx.Response(200, json={"tokens": [1, 2]})
        return events(delta("ok"), FINISH)

    settings = Settings(database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"})  # type: ignore[arg-type]
    async with asyncio.timeout(NEVER), Parley(settings, backend=backend_for(respond)) as app:
        assert app.backend is not None
        assert app.backend.capabilities.exact_token_counts
    assert probes >= 2  # asked again once the wait was over


# --- a thinking model ------------------------------------------------------------------------


async def test_a_thinking_model_is_not_cut_while_it_reasons() -> None:
    """vLLM with a reasoning parser (Qwen3, DeepSeek-R1, gpt-oss) streams a thinking model's
    reasoning as "reasoning_content" deltas, and its answer as content only after it. Only
    content ended the first-token wait: a model that reasoned longer than first_token_s
    (60 s by default), tokens arriving all along, was given up as a hang, and tried again
    from the start (a time-out before any text is retried), each try reasoning again, until
    the user was told the model took too long. Reasoning now ends the first-token wait, in
    the backend and in the retry layer; the gap limit bounds it from there."""
    asked = 0

    def chat(_: httpx.Request) -> httpx.Response:
        nonlocal asked
        asked += 1

        async def body() -> AsyncIterator[bytes]:
            for step in range(8):  # 2.4 s of reasoning, past first_token_s, within gap_s
                await asyncio.sleep(0.3)
                thought = {"choices": [{"index": 0, "delta": {"reasoning_content": f"{step} "}}]}
                yield f"data: {json.dumps(thought)}\n\n".encode()
            answer = {
                "choices": [{"index": 0, "delta": {"content": "42"}, "finish_reason": "stop"}]
            }
            yield f"data: {json.dumps(answer)}\n\ndata: [DONE]\n\n".encode()

        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    settings = BackendSettings.model_validate(
        {
            "kind": "openai",
            "base_url": "http://llm.test",
            "model": MODEL,
            # The first reasoning chunk is due at 0.3 s: 1.2 s to spare on a loaded machine.
            "timeouts": {"first_token_s": 1.5, "gap_s": 2.0, "total_s": 20.0},
            "retry": {"base_delay_s": 0.01, "max_delay_s": 0.02},
        }
    )
    inner = OpenAICompatBackend(settings, transport=httpx.MockTransport(server(chat)))
    backend = ResilientBackend(inner, settings)
    request = GenerationRequest([ChatMessage(Role.USER, "what is six times seven?")], 16)
    try:
        got = await reply_of(backend, request)
    finally:
        await backend.aclose()
    assert "".join(c.text for c in got) == "42"
    assert got[-1].finish_reason == "stop"
    assert asked == 1


async def test_a_thinking_model_that_reasons_without_end_is_given_up_at_max_tokens(
    database_url: str,
) -> None:
    """Reasoning counts as progress (above), and it did not count to the reply's size limit
    (32 characters per max_tokens token, for a server that ignores max_tokens): a model that
    reasoned without end, never answering, held the user's turn, and the request, until
    total_s (5 minutes by default). Its reasoning now counts to that limit, as its tokens
    count to max_tokens: past it the request is closed, not tried again (it would reason as
    long again), and the user gets the usual sentence."""
    asked = 0
    closed = 0

    class Reasoning(httpx.AsyncByteStream):
        """1,000 characters of reasoning at a time, for ever (max_tokens ignored)."""

        async def __aiter__(self) -> AsyncIterator[bytes]:
            thought = {"choices": [{"index": 0, "delta": {"reasoning_content": "hmm " * 250}}]}
            while True:
                await asyncio.sleep(0)
                yield f"data: {json.dumps(thought)}\n\n".encode()

        async def aclose(self) -> None:
            nonlocal closed
            closed += 1

    def chat(_: httpx.Request) -> httpx.Response:
        nonlocal asked
        asked += 1
        return httpx.Response(
            200, stream=Reasoning(), headers={"content-type": "text/event-stream"}
        )

    backend = BackendSettings.model_validate(
        {
            "kind": "openai",
            "base_url": "http://llm.test",
            "model": MODEL,
            "max_tokens": 16,  # the limit is then 16,384 characters
            # Longer than the test's own bound: the reasoning must end at the size limit.
            "timeouts": {"first_token_s": NEVER * 2, "gap_s": NEVER * 2, "total_s": NEVER * 4},
            "retry": {"base_delay_s": 0.01, "max_delay_s": 0.02},
        }
    )
    inner = OpenAICompatBackend(backend, transport=httpx.MockTransport(server(chat)))
    settings = Settings(database={"url": database_url}, backend=backend)  # type: ignore[arg-type]
    async with Parley(settings, backend=ResilientBackend(inner, backend)) as app:
        sink = CollectingSink()
        app.manager.attach("test", sink)
        key = ConversationKey("test", "chat-1")
        async with asyncio.timeout(NEVER):
            await app.manager.handle(Incoming(key, User("test", "u1"), "why?", "m1"))
    assert sink.replies[key] == [phrases.TIMEOUT]
    assert asked == 1  # not tried again
    assert closed == 1  # the request was closed


async def test_reasoning_sent_under_both_field_names_counts_once() -> None:
    """vLLM releases that renamed "reasoning_content" to "reasoning" send both, the same
    text in each (DeltaMessage copies one into the other). The reply's size limit summed the
    two: reasoning counted twice, and a model that reasoned for 13,000 characters, within
    the 16,384 its max_tokens allows, was given up before its answer (ReasoningTooLong)."""

    def chat(_: httpx.Request) -> httpx.Response:
        thought = "hmm " * 250
        both = {"reasoning_content": thought, "reasoning": thought}
        reasoning = {"choices": [{"index": 0, "delta": both}]}
        return events(*([reasoning] * 13), delta("42"), FINISH)

    settings = BackendSettings.model_validate(
        {"kind": "openai", "base_url": "http://llm.test", "model": MODEL}
    )
    backend = OpenAICompatBackend(settings, transport=httpx.MockTransport(server(chat)))
    request = GenerationRequest([ChatMessage(Role.USER, "why?")], 16)  # 16,384 characters
    try:
        got = await reply_of(backend, request)
    finally:
        await backend.aclose()
    assert "".join(c.text for c in got) == "42"
    assert got[-1].finish_reason == "stop"


async def test_a_thinking_model_given_up_for_its_reasoning_does_not_open_the_breaker() -> None:
    """A reply given up for reasoning past max_tokens' worth (ReasoningTooLong) was counted
    as a hang of the server: a breaker failure. The server answered at once, as fast as it
    could; the prompt made the model reason long. A few hard questions in a row opened the
    breaker, and every conversation's next answer was refused (CircuitOpen)."""
    asked = 0

    def chat(_: httpx.Request) -> httpx.Response:
        nonlocal asked
        asked += 1
        if asked <= 2:  # reasoning past the limit (16,384 characters), never answering
            thought = {"choices": [{"index": 0, "delta": {"reasoning_content": "hmm " * 250}}]}
            return events(*([thought] * 20))
        return events(delta("42"), FINISH)

    settings = BackendSettings.model_validate(
        {
            "kind": "openai",
            "base_url": "http://llm.test",
            "model": MODEL,
            "breaker": {"failure_threshold": 2},
            "retry": {"base_delay_s": 0.01, "max_delay_s": 0.02},
        }
    )
    inner = OpenAICompatBackend(settings, transport=httpx.MockTransport(server(chat)))
    backend = ResilientBackend(inner, settings)
    request = GenerationRequest([ChatMessage(Role.USER, "why?")], 16)
    try:
        for _ in range(2):
            with pytest.raises(ReasoningTooLong):
                await reply_of(backend, request)
        got = await reply_of(backend, request)
    finally:
        await backend.aclose()
    assert "".join(c.text for c in got) == "42"
    assert asked == 3


async def test_a_thinking_model_that_stalls_while_it_reasons_is_cut_at_the_gap() -> None:
    """Reasoning ends the first-token wait (above), so the gap limit bounds it from there: a
    server that sends some reasoning (vLLM's newer field name, "reasoning") and then nothing
    is given up after gap_s, not left to run until total_s, and, nothing having been shown,
    is tried again (docs/resilience.md)."""
    asked = 0

    def chat(_: httpx.Request) -> httpx.Response:
        nonlocal asked
        asked += 1

        async def body() -> AsyncIterator[bytes]:
            thought = {"choices": [{"index": 0, "delta": {"reasoning": "let me see "}}]}
            yield f"data: {json.dumps(thought)}\n\n".encode()
            await asyncio.sleep(NEVER)  # and then nothing

        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    settings = BackendSettings.model_validate(
        {
            "kind": "openai",
            "base_url": "http://llm.test",
            "model": MODEL,
            "timeouts": {"first_token_s": 5.0, "gap_s": 0.3, "total_s": 20.0},
            "retry": {"attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.02},
        }
    )
    inner = OpenAICompatBackend(settings, transport=httpx.MockTransport(server(chat)))
    backend = ResilientBackend(inner, settings)
    request = GenerationRequest([ChatMessage(Role.USER, "what is six times seven?")], 16)
    got: list[str] = []
    try:
        with pytest.raises(BackendTimeout, match="next chunk"):
            async with asyncio.timeout(NEVER), aclosing(backend.stream(request)) as chunks:
                got.extend([c.text async for c in chunks])
    finally:
        await backend.aclose()
    assert "".join(got) == ""  # the reasoning is not shown
    assert asked == 2
