"""N concurrent conversations through Parley against the same prompts sent straight to vLLM.

    .venv/bin/python -m bench.concurrency                  # N = 1, 8, 64; 3 turns each
    .venv/bin/python -m bench.concurrency --sizes 1 8 --turns 2

Starts vLLM's OpenAI-compatible server on the tiny model with prefix caching off, so neither
side profits from the other's cached prompts. For each N: N conversations run concurrently
through `bot.app.Parley` (backend kind openai as the factory builds it, a collecting sink; turns
of one conversation in order), recording every chat request; then the same requests are sent
straight to `/v1/chat/completions` with httpx, N conversations concurrently, each streamed and
read to the end. Greedy sampling (temperature 0) keeps the replies, and so the work, the same.
Each side runs twice, alternating; the faster run of each is reported with the ratio
Parley / direct (target <= 1.05). A benchmark reports; it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

from backends.factory import build_resilient_backend
from bench.prefix_cache import Recording, Seen, vllm_server
from bot.app import Parley
from bot.settings import Settings
from bot.types import ConversationKey, Incoming, User
from tests.doubles import CollectingSink
from tests.fixtures_vllm import SERVED_MODEL
from tests.tinymodel import build_tiny_model

MAX_TOKENS = 32
QUESTIONS = ["hello there", "what is the weather like", "and tomorrow?", "thanks a lot"]


def settings_for(base_url: str, folder: Path) -> Settings:
    return Settings(
        database={"url": f"sqlite+aiosqlite:///{folder}/parley.db"},  # type: ignore[arg-type]
        backend={  # type: ignore[arg-type]
            "kind": "openai",
            "base_url": base_url,
            "model": SERVED_MODEL,
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
        },
    )


async def through_parley(
    base_url: str, folder: Path, n: int, turns: int, tag: str
) -> tuple[float, dict[str, list[Seen]]]:
    settings = settings_for(base_url, folder)
    backend = build_resilient_backend(settings.backend)
    assert backend is not None
    recording = Recording(backend)
    async with Parley(settings, backend=recording) as app:  # type: ignore[arg-type]
        app.manager.attach("bench", CollectingSink())

        async def conversation(i: int) -> None:
            key = ConversationKey("bench", f"{tag}-{i}")
            for t in range(turns):
                text = f"{QUESTIONS[t % len(QUESTIONS)]} ({i})"
                await app.manager.handle(Incoming(key, User("bench", "u"), text, f"{key}-{t}"))

        started = time.perf_counter()
        await asyncio.gather(*(conversation(i) for i in range(n)))
        elapsed = time.perf_counter() - started
    prompts: dict[str, list[Seen]] = defaultdict(list)
    for seen, session in zip(recording.seen, recording.sessions, strict=True):
        prompts[session].append(seen)
    return elapsed, prompts


async def direct(base_url: str, prompts: dict[str, list[Seen]]) -> float:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as http:

        async def conversation(turns: list[Seen]) -> None:
            for seen in turns:  # each request as Parley sent it: intent checks, chat turns
                body = {
                    "model": SERVED_MODEL,
                    "messages": [m.as_openai() for m in seen.messages],
                    "max_tokens": seen.max_tokens,
                    "temperature": seen.temperature,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: {"):
                            json.loads(line[6:])  # parse like a client would

        started = time.perf_counter()
        await asyncio.gather(*(conversation(turns) for turns in prompts.values()))
        return time.perf_counter() - started


async def run(sizes: list[int], turns: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="parley-concurrency-"))
    model_dir = build_tiny_model(folder / "model")
    with vllm_server(model_dir, folder / "server.log", ["--no-enable-prefix-caching"]) as url:
        await through_parley(url, folder, 2, 1, "warmup")
        print(f"{'N':>4}  {'parley s':>9}  {'direct s':>9}  {'ratio':>6}  (target <= 1.05)")
        for n in sizes:
            parley_runs, direct_runs = [], []
            for round_ in range(2):
                elapsed, prompts = await through_parley(url, folder, n, turns, f"n{n}r{round_}")
                parley_runs.append(elapsed)
                direct_runs.append(await direct(url, prompts))
            p, d = min(parley_runs), min(direct_runs)
            print(f"{n:>4}  {p:9.3f}  {d:9.3f}  {p / d:6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.sizes, args.turns))


if __name__ == "__main__":
    main()
