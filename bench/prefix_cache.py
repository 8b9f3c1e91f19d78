"""vLLM's prefix-cache hit rate for 20-turn conversations driven through Parley.

    .venv/bin/python -m bench.prefix_cache                 # 3 conversations of 20 turns
    .venv/bin/python -m bench.prefix_cache --conversations 1 --turns 10

Starts vLLM's OpenAI-compatible server on the tiny model (tests/tinymodel.py, built into a
temporary folder), runs the conversations one turn at a time through `bot.app.Parley`
(backend kind openai, the resilient backend the factory builds, a collecting sink), and prints
per turn: prompt tokens, cached tokens (the server's `prompt_tokens_details.cached_tokens`),
the ideal, and whether the window rolled over. Over the whole run it also reads
`vllm:prefix_cache_hits_total` / `vllm:prefix_cache_queries_total` from /metrics.

The ideal for a turn is every full cache block before the new user message: the tokens the
prompt shares with the previous turn's prompt plus reply, rounded down to the block size (128
tokens on the CPU build; read from the server log when it says). At a roll-over the summary
block changes, so the shared part is what precedes it. A benchmark reports; it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from backends.base import Backend, Capabilities, Chunk, GenerationRequest, Usage
from backends.factory import build_resilient_backend
from bot.app import Parley
from bot.settings import Settings
from bot.types import ChatMessage, ConversationKey, Incoming, User
from tests.doubles import CollectingSink
from tests.fixtures_vllm import SERVED_MODEL, VLLM_ENV, _free_port, _server_command, _stop
from tests.tinymodel import build_tiny_model

DEFAULT_BLOCK = 128
QUESTIONS = [
    "hello there, how is the weather today",
    "tell me about python servers and clients",
    "good, and then what happens next",
    "thanks, one more thing about the day",
    "and what about tomorrow, will it rain",
]


@dataclass
class Seen:
    """One chat request as the server saw it."""

    messages: list[ChatMessage]
    usage: Usage | None = None
    max_tokens: int = 0
    temperature: float = 0.0


class Recording:
    """The real backend, keeping each chat request (session id set) and its usage."""

    def __init__(self, inner: Backend, system_prompt: str | None = None) -> None:
        self.inner = inner
        # When set, only requests that start with it are kept: the chat turns, not the
        # requests of other skills (intent detection, summaries) that share the session.
        self._system_prompt = system_prompt
        self.seen: list[Seen] = []
        self.sessions: list[str] = []  # the session id of each entry of `seen`

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    async def start(self) -> None:
        await self.inner.start()

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return await self.inner.count_tokens(texts)

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return await self.inner.count_chat_tokens(messages)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        entry = Seen(list(request.messages), None, request.max_tokens, request.temperature)
        first = request.messages[0].content if request.messages else ""
        wanted = self._system_prompt is None or first == self._system_prompt
        if request.session_id and wanted:  # summaries have no session id
            self.seen.append(entry)
            self.sessions.append(request.session_id)
        async with contextlib.aclosing(self.inner.stream(request)) as chunks:
            async for chunk in chunks:
                entry.usage = chunk.usage or entry.usage
                yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextlib.contextmanager
def vllm_server(model_dir: Path, log_path: Path, extra_args: Sequence[str] = ()) -> Iterator[str]:
    os.environ.update({k: os.environ.get(k, v) for k, v in VLLM_ENV.items()})
    port = _free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*_server_command(model_dir, port), *extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield base_url
    finally:
        _stop(process)


def block_size(log_path: Path) -> int:
    found = re.search(r"block_size[=:\s'\"]+(\d+)", log_path.read_text(errors="replace"))
    return int(found[1]) if found else DEFAULT_BLOCK


async def metric(http: httpx.AsyncClient, name: str) -> float:
    text = (await http.get("/metrics")).text
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(m[2]) for m in pattern.finditer(text))


async def token_ids(
    http: httpx.AsyncClient, messages: Sequence[ChatMessage], gen: bool
) -> list[int]:
    body = {
        "model": SERVED_MODEL,
        "messages": [m.as_openai() for m in messages],
        "add_generation_prompt": gen,
    }
    tokens = (await http.post("/tokenize", json=body)).json()["tokens"]
    return [int(t) for t in tokens]


@dataclass
class TurnFigures:
    prompt: int
    cached: int
    ideal: int
    rollover: bool


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


async def figures(http: httpx.AsyncClient, seen: list[Seen], block: int) -> list[TurnFigures]:
    """Per chat turn: what the server cached against the ideal (see the module docstring)."""
    out: list[TurnFigures] = []
    previous: list[int] = []
    for i, entry in enumerate(seen):
        ids = await token_ids(http, entry.messages, gen=True)
        before_user = len(await token_ids(http, entry.messages[:-1], gen=False))
        prior = seen[i - 1].messages if i else []
        rollover = bool(prior) and entry.messages[: len(prior)] != prior
        shared = min(common_prefix(previous, ids), before_user) if rollover else before_user
        usage = entry.usage or Usage()
        out.append(
            TurnFigures(len(ids), usage.cached_tokens or 0, shared // block * block, rollover)
        )
        previous = ids
    return out


def settings_for(base_url: str, folder: Path) -> Settings:
    return Settings(
        database={"url": f"sqlite+aiosqlite:///{folder}/parley.db"},  # type: ignore[arg-type]
        backend={  # type: ignore[arg-type]
            "kind": "openai",
            "base_url": base_url,
            "model": SERVED_MODEL,
            "max_tokens": 48,
            "temperature": 0.8,
        },
        conversation={"context_tokens": 600, "summary_tokens": 64},  # type: ignore[arg-type]
    )


async def converse(app: Parley, name: str, turns: int) -> None:
    key = ConversationKey("bench", name)
    user = User("bench", "u", "Ada")
    for turn in range(turns):
        text = f"{QUESTIONS[turn % len(QUESTIONS)]} (turn {turn + 1})"
        await app.manager.handle(Incoming(key, user, text, f"{name}-{turn}"))


def report(name: str, rows: list[TurnFigures]) -> None:
    print(f"\nconversation {name}")
    print(" turn  prompt  ideal  cached  %ideal  rollover")
    for n, row in enumerate(rows, 1):
        share = f"{100 * row.cached / row.ideal:6.1f}" if row.ideal else "     -"
        flag = "yes" if row.rollover else ""
        print(f" {n:4d}  {row.prompt:6d}  {row.ideal:5d}  {row.cached:6d}  {share}  {flag}")


def ratio(rows: list[TurnFigures]) -> str:
    ideal = sum(r.ideal for r in rows)
    return f"{100 * sum(min(r.cached, r.ideal) for r in rows) / ideal:.1f}%" if ideal else "n/a"


async def run(conversations: int, turns: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="parley-prefix-"))
    model_dir = build_tiny_model(folder / "model")
    log_path = folder / "server.log"
    with vllm_server(model_dir, log_path) as base_url:
        block = block_size(log_path)
        settings = settings_for(base_url, folder)
        backend = build_resilient_backend(settings.backend)
        assert backend is not None
        recording = Recording(backend, settings.conversation.system_prompt)
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            hits0 = await metric(http, "vllm:prefix_cache_hits_total")
            queries0 = await metric(http, "vllm:prefix_cache_queries_total")
            all_rows: list[TurnFigures] = []
            async with Parley(settings, backend=recording) as app:  # type: ignore[arg-type]
                app.manager.attach("bench", CollectingSink())
                for c in range(conversations):
                    recording.seen.clear()
                    recording.sessions.clear()
                    await converse(app, f"conv-{c}", turns)
                    rows = await figures(http, list(recording.seen), block)
                    report(f"conv-{c}", rows)
                    all_rows += rows
            await asyncio.sleep(1)  # the server's counters trail the last reply by a step
            hits = await metric(http, "vllm:prefix_cache_hits_total") - hits0
            queries = await metric(http, "vllm:prefix_cache_queries_total") - queries0
    plain = [r for r in all_rows if not r.rollover]
    ideal_rate = sum(r.ideal for r in all_rows) / max(1, sum(r.prompt for r in all_rows))
    print(f"\nblock size {block} tokens; {conversations} conversations x {turns} turns")
    print(f"turns without roll-over: cached / ideal = {ratio(plain)}  (target >= 95%)")
    print(f"whole conversations:     cached / ideal = {ratio(all_rows)}  (target >= 85%)")
    print(
        f"/metrics over the run (summaries included): hit rate {100 * hits / max(1, queries):.1f}% "
        f"({hits:.0f} of {queries:.0f} tokens); ideal chat hit rate {100 * ideal_rate:.1f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=3)
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.conversations, args.turns))


if __name__ == "__main__":
    main()
