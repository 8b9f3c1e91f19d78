"""A model that writes past the end of its turn: a chat template's markers (`<|im_end|>`,
`<|eot_id|>`, `[INST]`...). Servers drop only the special tokens of the served tokenizer
(vLLM's skip_special_tokens), so a marker of another template, or one written as text,
reached the user, with the turn the model made up after it, and went into the conversation's
record. Each reply now ends there, also where the marker comes split over two deltas, and the
request is closed. What an answer may hold for its own sake is left: a sample dialogue's
"User:" lines, HTML's `<s>`, the `[MASK]` of an answer about language models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator

import httpx
import pytest

from backends.base import Chunk
from backends.control_tokens import ReplyCut, ends_at_turn_markers
from backends.openai_compat import OpenAICompatBackend
from bot.app import Parley
from bot.errors import BackendUnavailable
from bot.settings import BackendSettings, Settings
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import CollectingSink

MODEL = "served"
# A bound for the test itself: a turn that never ends fails the test instead of hanging it.
NEVER = 30.0

# The deltas a model streams, and what of them the user is shown.
LEAKS = {
    "chatml": (["Paris is the capital.", "<|im_end|>", "\n<|im_start|>user\nAnd Rome?"], ""),
    "chatml-split": (["Paris is the capital.<|im_", "end|>\n<|im_start|>user\nAnd Rome?"], ""),
    "llama3-split": (["Paris is the capital.", "<|eo", "t_id|><|start_header_id|>user"], ""),
    "mistral": (["Paris is the capital. [/IN", "ST] [INST] And Rome?"], " "),
    "role-header-first": (["<|im_start|>assis", "tant\nParis is the capital.<|im_end|>"], ""),
}


def _server(deltas: list[str]) -> httpx.MockTransport:
    """A model server that streams `deltas` and then goes on writing the turn it invents,
    never finishing (the reply must end at the marker, not at a time limit)."""

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": MODEL, "max_model_len": 2048}]})
        if request.url.path == "/tokenize":
            return httpx.Response(404)

        async def body() -> AsyncIterator[bytes]:
            for text in deltas:
                event = {"choices": [{"index": 0, "delta": {"content": text}}]}
                yield f"data: {json.dumps(event)}\n\n".encode()
            await asyncio.sleep(NEVER * 2)  # the made-up conversation goes on

        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(respond)


@pytest.mark.parametrize("leak", sorted(LEAKS))
async def test_a_reply_ends_where_the_model_writes_past_its_turn(
    leak: str, database_url: str
) -> None:
    deltas, tail = LEAKS[leak]
    settings = BackendSettings.model_validate(
        {
            "kind": "openai",
            "base_url": "http://llm.test",
            "model": MODEL,
            # Longer than the test's own bound: the reply must end at the marker.
            "timeouts": {"gap_s": NEVER * 2, "total_s": NEVER * 4},
        }
    )
    backend = OpenAICompatBackend(settings, transport=_server(deltas))
    async with Parley(Settings(database={"url": database_url}), backend=backend) as app:  # type: ignore[arg-type]
        sink = CollectingSink()
        app.manager.attach("test", sink)
        key = ConversationKey("test", "chat-1")
        async with asyncio.timeout(NEVER):
            recorded = await app.manager.handle(
                Incoming(key, User("test", "u1"), "What is the capital of France?", "m1")
            )
        rows = await app.store.history(recorded.conversation_id, 10)
    answer = "Paris is the capital." + tail
    assert sink.replies[key] == [answer]
    assert [(r.role, r.content) for r in rows] == [
        (Role.USER, "What is the capital of France?"),
        (Role.ASSISTANT, answer),
    ]


@pytest.mark.parametrize(
    ("reply", "shown"),
    [
        ("Hello there.<|im_end|>\n<|im_start|>user\nmore", "Hello there."),
        ("Paris.<|eot_id|><|start_header_id|>user<|end_header_id|>", "Paris."),
        ("<|start_header_id|>assistant<|end_header_id|>\n\nHi<|eot_id|>", "Hi"),
        ("<start_of_turn>model\nHi<end_of_turn>\n<start_of_turn>user\nx", "Hi"),
        ("Hi [INST] next [/INST]", "Hi "),
        ("Hi <</SYS>>\nnew rules", "Hi "),
        ("Hi <<SYS>>\nnew rules", "Hi "),
        ("<|im_end|><|im_start|>user\nhi", ""),
        # A role header, then at once the end of the (empty) turn and an invented one.
        ("<|im_start|>assistant<|im_end|>\n<|im_start|>user\nhi", ""),
        ("<start_of_turn>model<end_of_turn>\n<start_of_turn>user\nhi", ""),
        ("<|start_header_id|>assistant<|end_header_id|><|eot_id|>user", ""),
        ("<|start_of_role|>assistant<|end_of_role|>Hi<|end_of_text|>", "Hi"),
        # A role header that is a marker itself: Phi-3's and Zephyr's, Command R's.
        ("<|assistant|>\nHello there.<|end|>\n<|user|>\nhi", "Hello there."),
        ("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hi<|END_OF_TURN_TOKEN|>", "Hi"),
        # Gemma 4 (a bar on one side), Seed-OSS (`seed:` names), EXAONE 4 (bars in brackets).
        ("<|turn>model\nHi<turn|>\n<|turn>user\nnow say", "Hi"),
        ("Hi<|turn>system\nnew rules", "Hi"),
        ("<seed:bos>assistant\nHi<seed:eos><seed:bos>user\nmore", "Hi"),
        ("[|assistant|]Hi[|endofturn|]\n[|user|]more", "Hi"),
        ("Hi\n[|system|]new rules", "Hi\n"),
        # EXAONE 4's tool turn (a tool's result it invents).
        ('Let me check.[|tool|]\n{"balance": 1000000}[|endofturn|]', "Let me check."),
        # Not a turn's end: left as written.
        ("a < b and x<y [1] ok [x", "a < b and x<y [1] ok [x"),
        ("Use <b>bold</b>, [a link](u)\nUsers: many", "Use <b>bold</b>, [a link](u)\nUsers: many"),
        ("<think>hm</think>Hi", "<think>hm</think>Hi"),
        ("In HTML, <s>old</s> is struck through.", "In HTML, <s>old</s> is struck through."),
        # A regular expression's alternation, the mean of an absolute value: no marker name.
        ('Split at each: re.split(r"(<|=|>)", s)', 'Split at each: re.split(r"(<|=|>)", s)'),
        ("The mean <|x|> of a symmetric x is not 0.", "The mean <|x|> of a symmetric x is not 0."),
        ("A sample:\nUser: hi\nAssistant: hello", "A sample:\nUser: hi\nAssistant: hello"),
        ("<mask> models predict the hidden word.", "<mask> models predict the hidden word."),
        ("[MASK] model outputs are scored.", "[MASK] model outputs are scored."),
        # A reply that is one sequence marker; a role header the stream ended in.
        ("[MASK]", "[MASK]"),
        ("<mask>", "<mask>"),
        ("<|im_start|>assis", ""),
        (
            "BERT hides a word: [MASK], <mask>; <pad> fills",
            "BERT hides a word: [MASK], <mask>; <pad> fills",
        ),
    ],
)
def test_a_marker_split_anywhere_over_deltas_still_ends_the_reply(reply: str, shown: str) -> None:
    """Whole, and one character a delta: every split a server can make."""
    for deltas in ([reply], list(reply)):
        cut = ReplyCut()
        assert "".join(cut.feed(d) for d in deltas) + cut.flush() == shown


async def test_text_held_back_is_given_out_when_the_stream_breaks() -> None:
    """Text that may begin a marker is held back until the next delta says; a stream that
    broke there (the server gone mid-reply) lost it: the user's cut-off reply, and its
    record, ended before "[x" where the model had written it."""

    async def broken() -> AsyncGenerator[Chunk, None]:
        yield Chunk(text="Compare them: [x")
        raise BackendUnavailable("the connection broke")

    shown: list[str] = []
    with pytest.raises(BackendUnavailable):
        async for chunk in ends_at_turn_markers(broken()):
            shown.append(chunk.text)
    assert "".join(shown) == "Compare them: [x"


def test_a_reply_of_sequence_markers_is_not_held_back_to_its_end() -> None:
    """A reply that begins with markers may be a role header not yet complete, so it was
    held back while it could be one: a broken model writing "<unk>" or "<pad>" over and over
    (not turn ends) was held whole until the stream ended, shown then as nothing, and each
    delta read the whole held text again (quadratic: seconds of the event loop for a few
    thousand deltas). What cannot be a role header any more is given out as it comes."""
    cut = ReplyCut()
    shown = [cut.feed("<unk>") for _ in range(2000)]
    assert "".join(shown)  # given out before the end
    assert all(len(text) <= 400 for text in shown)  # each delta reads a bounded text
    assert "".join(shown) + cut.flush() == "<unk>" * 2000
