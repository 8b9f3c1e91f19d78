"""The bare client of bench.turn_overhead: one streaming chat call over httpx, nothing else.

Only httpx is imported, so LangChain's interpreter (its own venv) runs the same call.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence

import httpx

MODEL = "standin"
TURNS = 6  # turns per conversation


async def complete(client: httpx.AsyncClient, messages: Sequence[dict[str, str]]) -> str:
    """The streamed reply to `messages`, read to [DONE]."""
    body = {"model": MODEL, "messages": list(messages), "stream": True, "max_tokens": 32}
    parts: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)


def new_client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=30.0)


class Bare:
    """A conversation kept in a list: the call alone."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self._history: dict[str, list[dict[str, str]]] = {}

    async def turn(self, conversation: str, text: str) -> None:
        history = self._history.setdefault(conversation, [])
        history.append({"role": "user", "content": text})
        history.append({"role": "assistant", "content": await complete(self._client, history)})


Turn = Callable[[str, str], Awaitable[None]]


async def timed_runs(
    turn: Turn, label: str, conversations: int, *, together: bool
) -> list[tuple[int, float]]:
    """(turn index, ms) of every turn: `conversations` conversations of TURNS turns, one turn
    at a time (round robin) or all conversations at once."""
    times: list[tuple[int, float]] = []

    async def one(c: int, n: int) -> None:
        start = time.perf_counter()
        await turn(f"{label}-{c}", f"question {n} of conversation {c}")
        times.append((n, (time.perf_counter() - start) * 1000))

    async def conversation(c: int) -> None:
        for n in range(TURNS):
            await one(c, n)

    if together:
        await asyncio.gather(*(conversation(c) for c in range(conversations)))
    else:
        for n in range(TURNS):
            for c in range(conversations):
                await one(c, n)
    return times


def percentile(values: Sequence[float], q: int) -> float:
    """The q-th percentile (1-99)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def measure(bare: Turn, stack: Turn, sequential: int, together: int) -> dict[str, object]:
    """Both clients, warmed up, on the same workloads, bare first: the turn times (index, ms)
    of each, one turn at a time and `together` conversations at once."""
    await timed_runs(bare, "warm-bare", 4, together=False)
    await timed_runs(stack, "warm-stack", 4, together=False)
    out: dict[str, object] = {}
    for name, turn in (("bare", bare), ("stack", stack)):
        out[name] = {
            "sequential": await timed_runs(turn, f"{name}-s", sequential, together=False),
            "together": await timed_runs(turn, f"{name}-t", together, together=True),
        }
    return out
