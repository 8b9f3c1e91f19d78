"""Telegram streaming figures at the default settings, against the local stand-in Bot API
(which enforces Telegram's documented flood limits).

    python -m bench.telegram_bench [--tokens 3000] [--chats 50] [--token-ms 2]

For each scenario it prints: time from the backend's first token to the first visible
Telegram update (draft, message or edit), Bot API calls per answer, and 429s met.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path

from backends.base import Chunk, GenerationRequest
from bench.entry import non_negative_float, positive_int, run_main
from tests.doubles import ScriptedBackend
from tests.telegram_updates import feed, mention_update, telegram_stack, text_update

VISIBLE = {"sendMessage", "sendMessageDraft", "editMessageText"}


class TimedBackend(ScriptedBackend):
    """Notes when each conversation's first token leaves the backend."""

    def __init__(self, tokens: int, token_s: float) -> None:
        super().__init__(
            lambda r: " ".join(f"word{i}." for i in range(tokens)), delay=lambda: token_s
        )
        self.first_token: dict[str, float] = {}

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        async for chunk in super().stream(request):
            if chunk.text:
                self.first_token.setdefault(request.session_id or "", time.monotonic())
            yield chunk


async def scenario(name: str, chats: list[int], tokens: int, token_s: float) -> None:
    backend = TimedBackend(tokens, token_s)
    with tempfile.TemporaryDirectory() as tmp:
        async with telegram_stack(Path(tmp), backend) as (_, adapter, api):
            start = len(api.calls)
            for n, chat_id in enumerate(chats):
                ask = f"question {n}"
                payload = (
                    text_update(n + 1, chat_id, ask)
                    if chat_id > 0
                    else mention_update(n + 1, chat_id, f"@parley_bot {ask}", 7)
                )
                await feed(adapter, payload)
            began = time.monotonic()
            await adapter.idle()
            took = time.monotonic() - began
            calls = api.calls[start:]
    latencies = []
    for chat_id in chats:
        first = min(
            c.at for c in calls if c.method in VISIBLE and c.params.get("chat_id") == chat_id
        )
        latencies.append(first - backend.first_token[f"telegram:{chat_id}"])
    per_answer = sum(1 for c in calls if c.params.get("chat_id") is not None) / len(chats)
    rejected = sum(1 for c in calls if c.status == 429)
    median_ms = statistics.median(latencies) * 1000
    print(
        f"{name:<28} first token -> first visible update: median {median_ms:6.0f} ms, "
        f"max {max(latencies) * 1000:6.0f} ms | Bot API calls per answer {per_answer:5.1f} | "
        f"429s {rejected} | all answers done in {took:5.1f} s"
    )


async def main(tokens: int, chats: int, token_ms: float) -> None:
    token_s = token_ms / 1000
    print(f"{tokens}-token answers, one token every {token_ms} ms, default settings")
    await scenario("1 private chat (draft)", [1], tokens, token_s)
    await scenario("1 group (edits)", [-1001], tokens, token_s)
    groups = chats // 5  # one chat in five is a group; at least one private chat
    mixed = list(range(1, chats - groups + 1)) + [-1000 - i for i in range(1, groups + 1)]
    await scenario(f"{len(mixed)} chats at once", mixed, tokens, token_s)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=positive_int, default=3000)
    parser.add_argument("--chats", type=positive_int, default=50)
    parser.add_argument("--token-ms", type=non_negative_float, default=2.0)
    args = parser.parse_args()
    asyncio.run(main(args.tokens, args.chats, args.token_ms))


if __name__ == "__main__":
    run_main("bench.telegram_bench", cli)
