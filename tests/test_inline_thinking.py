"""A thinking model served without a reasoning parser (vLLM without `--reasoning-parser`,
llama.cpp, many OpenAI-compatible servers) streams its reasoning in the content, as
`<think> ... </think>` before its answer. Parley showed it to the user, stored it as the
answer and sent it back to the model as history. A reply that begins with `<think>` now has
its reasoning taken out as `reasoning_content` is: not shown, not stored, counted to the
reply's size limit; a `<think>` inside an answer stays text."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path

import httpx
import pytest

from backends.base import FINISH_LENGTH, Chunk, GenerationRequest
from backends.control_tokens import ChatEncoder
from backends.deadlines import bounded
from backends.inline_thinking import InlineThinking, opened_by_template
from backends.openai_compat import OpenAICompatBackend
from bot import phrases
from bot.app import Parley
from bot.errors import ReasoningTooLong
from bot.settings import BackendSettings, Settings, TimeoutSettings
from bot.types import ChatMessage, ConversationKey, Incoming, Role, User
from tests.doubles import CollectingSink

MODEL = "served"
# A bound for the test itself: a turn that never ends fails the test instead of hanging it.
NEVER = 30.0
THOUGHT = "<think>\nThe user asks about France. Its capital is Paris.\n</think>\n\n"


Delta = str | dict[str, str]  # a content delta, or a delta's whole fields


def _events(deltas: list[Delta]) -> httpx.Response:
    bodies: list[object] = [
        {"choices": [{"index": 0, "delta": {"content": d} if isinstance(d, str) else d}]}
        for d in deltas
    ]
    bodies.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    text = "".join(f"data: {json.dumps(b)}\n\n" for b in bodies) + "data: [DONE]\n\n"
    return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})


def _backend(replies: list[list[Delta]], asked: list[list[dict[str, str]]]) -> OpenAICompatBackend:
    """A server without a reasoning parser: each chat answered with the next reply's deltas;
    the messages of each chat request kept in `asked`."""

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": MODEL, "max_model_len": 4096}]})
        if request.url.path == "/tokenize":
            return httpx.Response(404)
        asked.append(json.loads(request.content)["messages"])
        return _events(replies[len(asked) - 1])

    settings = BackendSettings.model_validate(
        {"kind": "openai", "base_url": "http://llm.test", "model": MODEL}
    )
    return OpenAICompatBackend(settings, transport=httpx.MockTransport(respond))


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        (THOUGHT + "Paris.", "Paris."),
        ("  \n<think>hm</think>Hi <b>there</b>", "Hi <b>there</b>"),
        ("<think></think>Hi", "Hi"),
        ("<think>a <think> b</think>Hi", "Hi"),
        # A byte order mark before it, alone or among blanks: invisible, as the blanks are.
        ("\ufeff<think>hm</think>Hi", "Hi"),
        (" \ufeff\n<think>hm</think>Hi", "Hi"),
        # Reasoning that never ends, or nothing but reasoning: no answer.
        ("<think>still thinking about it <", ""),
        ("<think>done</think>\n\n", ""),
        # Not reasoning: a <think> inside an answer, a tag that only looks like one.
        ("Hi <think>x</think> there", "Hi <think>x</think> there"),
        ("<thinking>x</thinking>", "<thinking>x</thinking>"),
        # No model's tag (vLLM's reasoning parsers take `<think>` exactly), nor a second
        # block after the answer began: text, as there (module docstring).
        ("<THINK>x</THINK>Hi", "<THINK>x</THINK>Hi"),
        ('<think type="x">y</think>Hi', '<think type="x">y</think>Hi'),
        ("<think>a</think>Hi <think>b</think>!", "Hi <think>b</think>!"),
        ("\u200b<think>x</think>", "\u200b<think>x</think>"),
        # Magistral's and Seed-OSS's pairs (vLLM's `mistral` and `seed_oss` parsers): the
        # reasoning ends at the close of the pair it began with, not at another's.
        ("[THINK]hm[/THINK]\n\nHi", "Hi"),
        ("<seed:think>hm</seed:think>Hi", "Hi"),
        # Gemma 4's (vLLM's `gemma4` parser), its `thought` label inside the reasoning.
        ("<|channel>thought\nhm<channel|>Hi", "Hi"),
        ("<|channel>a [/THINK] b<channel|>Hi", "Hi"),
        ("Hi <|channel>x<channel|>", "Hi <|channel>x<channel|>"),
        ("<|chan", "<|chan"),
        ("[THINK]a </think> b[/THINK]Hi", "Hi"),
        ("<think>a [/THINK] b</think>Hi", "Hi"),
        ("[THINK]never ends", ""),
        ("[think]x[/think]Hi", "[think]x[/think]Hi"),
        ("Hi [THINK]x[/THINK]", "Hi [THINK]x[/THINK]"),
        ("[THI", "[THI"),
        ("<seed:thi", "<seed:thi"),
        ("<thi", "<thi"),
        ("  ", "  "),
        ("", ""),
    ],
)
def test_reasoning_split_anywhere_over_deltas_is_not_the_answer(reply: str, answer: str) -> None:
    """Whole, and one character a delta: every split a server can make. Every character is
    either reasoning or answer."""
    for deltas in ([reply], list(reply)):
        inline = InlineThinking()
        splits = [inline.feed(d) for d in deltas] + [inline.flush()]
        assert "".join(s.answer for s in splits) == answer
        assert sum(s.reasoning for s in splits) + len(answer) == len(reply)


async def test_inline_reasoning_is_neither_shown_nor_stored_nor_sent_back(
    database_url: str,
) -> None:
    asked: list[list[dict[str, str]]] = []
    first = ["<thi", THOUGHT[4:30], THOUGHT[30:-12], THOUGHT[-12:], "Paris is the capital."]
    backend = _backend([first, ["Rome."]], asked)
    async with Parley(Settings(database={"url": database_url}), backend=backend) as app:  # type: ignore[arg-type]
        sink = CollectingSink()
        app.manager.attach("test", sink)
        key = ConversationKey("test", "chat-1")
        async with asyncio.timeout(NEVER):
            await app.manager.handle(Incoming(key, User("test", "u1"), "Capital of France?", "m1"))
            recorded = await app.manager.handle(
                Incoming(key, User("test", "u1"), "And of Italy?", "m2")
            )
        rows = await app.store.history(recorded.conversation_id, 10)
    assert sink.replies[key] == ["Paris is the capital.", "Rome."]
    assert [(r.role, r.content) for r in rows] == [
        (Role.USER, "Capital of France?"),
        (Role.ASSISTANT, "Paris is the capital."),
        (Role.USER, "And of Italy?"),
        (Role.ASSISTANT, "Rome."),
    ]
    history = [m["content"] for m in asked[1]]
    assert "Paris is the capital." in history
    assert not any("think" in content for content in history)


async def test_reasoning_that_never_ends_gives_no_answer(database_url: str) -> None:
    """The stream ends inside `<think>`: the user gets the usual sentence for an empty
    answer, not the model's thinking."""
    backend = _backend([["<think>Let me see. ", "France, capital", "..."]], [])
    async with Parley(Settings(database={"url": database_url}), backend=backend) as app:  # type: ignore[arg-type]
        sink = CollectingSink()
        app.manager.attach("test", sink)
        key = ConversationKey("test", "chat-1")
        async with asyncio.timeout(NEVER):
            await app.manager.handle(Incoming(key, User("test", "u1"), "Capital of France?", "m1"))
    assert sink.replies[key] == [phrases.EMPTY_ANSWER]


@pytest.mark.parametrize(
    ("deltas", "answer"),
    [
        (["<think>hm, a smile: ", "\ud83d"], ""),
        (["<th", "\ud83d"], "<th\ufffd"),
        (["Hi ", "\ud83d"], "Hi \ufffd"),
    ],
)
async def test_half_a_character_at_the_end_of_reasoning_is_reasoning(
    deltas: list[str], answer: str
) -> None:
    """A reply whose last event ends on half a character (a high surrogate) gets U+FFFD in
    its place. Inside an unended `<think>` that U+FFFD was shown as the whole answer."""
    backend = _backend([deltas], [])
    request = GenerationRequest([ChatMessage(Role.USER, "why?")], 16)
    try:
        async with asyncio.timeout(NEVER), aclosing(backend.stream(request)) as chunks:
            assert "".join([c.text async for c in chunks]) == answer
    finally:
        await backend.aclose()


async def test_inline_reasoning_counts_to_the_reply_size_limit() -> None:
    """As `reasoning_content` does (tests/test_backend_trial.py): reasoning past what
    max_tokens allows, with no answer yet, is given up (ReasoningTooLong), not shown cut."""
    backend = _backend([["<think>", *["hmm " * 250] * 20]], [])
    request = GenerationRequest([ChatMessage(Role.USER, "why?")], 16)  # 16,384 characters
    await _given_up_unshown(backend, request)


async def test_reasoning_sent_both_apart_and_inline_counts_once() -> None:
    """llama.cpp's `deepseek-legacy` reasoning format sends the reasoning twice, as
    `reasoning_content` and inline in the content (`<think>...</think>` too), in the same
    deltas. It counted twice to the reply's size limit: 10,000 characters of reasoning, under
    the 16,384 allowed, were taken for 20,000 and the turn given up (ReasoningTooLong)."""
    steps = ["hmm " * 250] * 10
    both: list[Delta] = [{"reasoning_content": "", "content": "<think>"}]
    both += [{"reasoning_content": step, "content": step} for step in steps]
    both += [{"content": "</think>\n\nParis."}]
    backend = _backend([both], [])
    request = GenerationRequest([ChatMessage(Role.USER, "Capital of France?")], 16)
    try:
        async with asyncio.timeout(NEVER), aclosing(backend.stream(request)) as chunks:
            assert "".join([c.text async for c in chunks]) == "Paris."
    finally:
        await backend.aclose()


async def test_reasoning_sent_one_way_then_the_other_counts_in_full() -> None:
    """Counted once only where the two copies come in the same deltas: reasoning sent as
    `reasoning_content` and then more of it inline (a server's parser that stopped at the
    first `</think>`, a model that opened a second block) is two, and together past the
    limit. Counted as the larger of the two running totals, 20,000 characters of reasoning
    under a 16,384 limit passed as 10,000, and a server that ignores max_tokens could send
    twice what the limit allows."""
    steps = ["hmm " * 250] * 10
    apart: list[Delta] = [{"reasoning_content": step} for step in steps]
    inline: list[Delta] = ["<think>", *steps, "</think>\n\nParis."]
    backend = _backend([[*apart, *inline]], [])
    request = GenerationRequest([ChatMessage(Role.USER, "Capital of France?")], 16)
    await _given_up_unshown(backend, request)


async def test_the_in_process_engine_reasoning_is_the_model_at_work() -> None:
    """The in-process engine has no reasoning parser either: its reasoning is now taken out
    of the text and passed on as chunks without text, which `bounded` (the engine's time
    limits) took for no token at all, so a model that reasoned past first_token_s, tokens
    arriving all along, was given up as a hang. Each such chunk now counts as one."""

    async def reasoning_then_answer() -> AsyncGenerator[Chunk, None]:
        for _ in range(7):  # 1.4 s of reasoning, past first_token_s, within gap_s
            await asyncio.sleep(0.2)
            yield Chunk()
        yield Chunk(text="42")

    # The first reasoning chunk is due at 0.2 s: 0.8 s to spare on a loaded machine.
    timeouts = TimeoutSettings(first_token_s=1.0, gap_s=NEVER, total_s=NEVER)
    async with asyncio.timeout(NEVER), aclosing(bounded(reasoning_then_answer(), timeouts)) as got:
        assert "".join([c.text async for c in got]) == "42"


async def test_blanks_that_may_lead_to_reasoning_count_to_the_reply_size_limit() -> None:
    """Blanks that begin a reply are held until it shows whether a `<think>` follows. They
    were held uncounted: a model writing only newlines, on a server that ignores max_tokens,
    was read to the end of its stream (until total_s), and all of it came as the answer, past
    the limit. They now count to it: the reply is cut there, as one that ran into max_tokens."""
    sent = 0

    async def newlines() -> AsyncGenerator[bytes, None]:
        nonlocal sent
        event = json.dumps({"choices": [{"index": 0, "delta": {"content": "\n" * 8}}]})
        for _ in range(4000):  # 32,000 characters, twice the limit
            sent += 1
            yield f"data: {event}\n\n".encode()
        yield b"data: [DONE]\n\n"

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": MODEL, "max_model_len": 4096}]})
        return httpx.Response(
            200, content=newlines(), headers={"content-type": "text/event-stream"}
        )

    settings = BackendSettings.model_validate(
        {"kind": "openai", "base_url": "http://llm.test", "model": MODEL}
    )
    backend = OpenAICompatBackend(settings, transport=httpx.MockTransport(respond))
    request = GenerationRequest([ChatMessage(Role.USER, "why?")], 16)  # 16,384 characters
    try:
        async with asyncio.timeout(NEVER), aclosing(backend.stream(request)) as stream:
            chunks = [chunk async for chunk in stream]
    finally:
        await backend.aclose()
    assert len("".join(c.text for c in chunks)) <= 16_384
    assert chunks[-1].finish_reason == FINISH_LENGTH
    assert sent < 4000  # not read to its end


def _tokenizer_folder(folder: Path, template: str) -> str:
    """A real (word-level) tokenizer with `template` as its chat template, saved in `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "?": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]")
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    return str(folder)


TURNS = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
# The generation prompt of DeepSeek-R1's (and QwQ's, Qwen3-Thinking-2507's) template: it opens
# the reasoning itself; the model writes only its end.
OPENING = TURNS + "{% if add_generation_prompt %}<|assistant|>\n<think>\n{% endif %}"
# Qwen3's with thinking off: an empty block in the prompt, the reply only an answer.
CLOSED = TURNS + "{% if add_generation_prompt %}<|assistant|>\n<think>\n\n</think>\n\n{% endif %}"


@pytest.mark.parametrize(
    ("template", "opens"),
    [(OPENING, True), (CLOSED, False), (TURNS + "<|assistant|>\n", False), ("{{ oops(", False)],
)
def test_a_template_that_writes_the_think_is_known(
    tmp_path: Path, template: str, opens: bool
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_folder(tmp_path, template))
    assert opened_by_template(tokenizer) is opens
    if template != "{{ oops(":
        assert ChatEncoder(tokenizer).opens_reasoning is opens  # the in-process engine's


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        ("The user asks about France.\n</think>\n\nParis.", "Paris."),
        ("still thinking <think> about it", ""),
        ("</think>Hi", "Hi"),
    ],
)
def test_reasoning_the_template_opened_ends_at_its_close(reply: str, answer: str) -> None:
    for deltas in ([reply], list(reply)):
        inline = InlineThinking(opened=True)
        splits = [inline.feed(d) for d in deltas] + [inline.flush()]
        assert "".join(s.answer for s in splits) == answer
        assert sum(s.reasoning for s in splits) + len(answer) == len(reply)


@pytest.mark.parametrize(
    ("deltas", "answer"),
    [
        # No reasoning parser: the reasoning, its </think>, then the answer, all content.
        (
            [
                {"content": "The user asks about Fr"},
                {"content": "ance.\n</th"},
                {"content": "ink>\n\nParis."},
            ],
            "Paris.",
        ),
        # A server with a reasoning parser: its content is the answer.
        (
            [{"reasoning_content": "The user asks about France."}, {"content": "\n\nParis."}],
            "\n\nParis.",
        ),
    ],
)
async def test_a_template_that_opens_the_reasoning_has_it_taken_out(
    tmp_path: Path, deltas: list[dict[str, str]], answer: str
) -> None:
    """DeepSeek-R1's template (QwQ's, Qwen3-Thinking-2507's) ends the prompt in `<think>`:
    the reply begins inside the reasoning and has only its `</think>`. With no reasoning
    parser on the server all of it was shown, the `</think>` too, and stored as the answer.
    Known from the local tokenizer (backend.tokenizer), as the in-process engine knows it."""
    assert await _opened_reply(tmp_path, deltas, "stop") == answer


async def _opened_reply(tmp_path: Path, deltas: list[dict[str, str]], finish: str) -> str:
    """What the HTTP backend, with a local tokenizer whose template opens the reasoning,
    shows of a streamed reply of `deltas` ending with `finish`."""
    events: list[object] = [{"choices": [{"index": 0, "delta": d}]} for d in deltas]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": MODEL, "max_model_len": 4096}]})
        if request.url.path == "/v1/chat/completions":
            return httpx.Response(
                200, content=body.encode(), headers={"content-type": "text/event-stream"}
            )
        return httpx.Response(404)

    settings = BackendSettings.model_validate(
        {
            "kind": "openai",
            "base_url": "http://llm.test",
            "model": MODEL,
            "tokenizer": _tokenizer_folder(tmp_path / finish, OPENING),
        }
    )
    backend = OpenAICompatBackend(settings, transport=httpx.MockTransport(respond))
    request = GenerationRequest([ChatMessage(Role.USER, "Capital of France?")], 16)
    try:
        await backend.start()
        async with asyncio.timeout(NEVER), aclosing(backend.stream(request)) as chunks:
            return "".join([c.text async for c in chunks])
    finally:
        await backend.aclose()


async def test_a_parsing_server_that_sends_no_reasoning_still_shows_the_answer(
    tmp_path: Path,
) -> None:
    """With a template that opens the reasoning, content before a `</think>` is reasoning;
    but a server with a reasoning parser takes the `</think>` out, and a model that thought
    nothing gives no reasoning_content to tell it by: the whole answer was taken for
    reasoning and the user got the empty-answer sentence. A reply the model ended itself
    ("stop") without any `</think>` is the answer; one cut at its length stays reasoning."""
    deltas = [{"content": "Paris is"}, {"content": " the capital."}]
    for finish, answer in (("stop", "Paris is the capital."), ("length", "")):
        assert await _opened_reply(tmp_path, deltas, finish) == answer, finish


async def _given_up_unshown(backend: OpenAICompatBackend, request: GenerationRequest) -> None:
    """`backend`'s stream for `request` ends in ReasoningTooLong, no text shown before."""
    try:
        async with asyncio.timeout(NEVER), aclosing(backend.stream(request)) as chunks:
            with pytest.raises(ReasoningTooLong):
                async for chunk in chunks:
                    assert not chunk.text
    finally:
        await backend.aclose()
