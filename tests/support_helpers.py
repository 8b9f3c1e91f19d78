"""Support API workers for tests: a real Parley app (PostgreSQL or SQLite, Redis or memory)
with the real support adapter, its Starlette app served by uvicorn on a free port; sites and
visitors made the way an operator and a browser make them; event streams read with httpx-sse.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse
from starlette.types import ASGIApp

from adapters.kit.http import HttpHost
from adapters.kit.runner import host_for
from adapters.support.adapter import SupportAdapter
from adapters.support.settings import SupportSettings
from adapters.support.sites import Site
from backends.base import Capabilities, Chunk, GenerationRequest, Usage, estimate_tokens
from bot.app import Parley
from bot.settings import load_settings
from bot.types import ChatMessage, Role
from tests.local_server import serving

ORIGIN = "https://shop.example"
OTHER_ORIGIN = "https://other.example"
SECRET = "test-token-secret-of-enough-length"


@dataclass
class Worker:
    app: Parley
    adapter: SupportAdapter
    url: str
    asgi: ASGIApp  # what uvicorn serves at `url`, for a request no HTTP client can make
    # The worker's own HTTP host (not serving): `serve()` serves `asgi` as a worker does, on
    # `[http] port` (uvicorn's h11 with Parley's limits), where `url`'s server is uvicorn's
    # default one.
    http: HttpHost

    def client(self, *, origin: str | None = ORIGIN, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Origin": origin} if origin else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30, **kwargs)

    async def add_site(self, name: str, origins: Sequence[str] = (ORIGIN,), **kw: Any) -> Site:
        site = await self.adapter.sites.add_site(name, origins, **kw)
        await self.adapter.directory.refresh(force=True)
        return site


@asynccontextmanager
async def support_worker(
    database_url: str,
    *,
    redis_url: str | None,
    key_prefix: str = "parley",
    backend: object | None = None,
    conversation: dict[str, Any] | None = None,
    http: dict[str, Any] | None = None,
    database: dict[str, Any] | None = None,
    budget: dict[str, Any] | None = None,
    **support: Any,
) -> AsyncIterator[Worker]:
    redis = {"url": redis_url, "key_prefix": key_prefix} if redis_url else {}
    settings = load_settings(
        None,
        database={"url": database_url, **(database or {})},
        redis=redis,
        knowledge={"load_sample": False, "semantic": False},
        conversation=conversation or {},
        http=http or {},
        budget=budget or {},
        adapters=["support"],
        support={"token_secret": SECRET, **support},
    )
    async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
        section = settings.section("support")
        assert isinstance(section, SupportSettings)
        host = host_for(app)
        adapter = SupportAdapter(host, section)
        app.intake.register("support", adapter, section.access)
        async with adapter:  # it mounts its routes as it starts
            asgi = host.http.app()
            async with serving(asgi) as port:
                yield Worker(app, adapter, f"http://127.0.0.1:{port}", asgi, host.http)
                await adapter.idle()


async def new_visitor(client: httpx.AsyncClient, site: Site, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/visitors", headers={"X-Parley-Site-Key": site.public_key}, json=body
    )
    assert response.status_code == 201, response.text
    visitor: dict[str, Any] = response.json()
    return visitor


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class EventReader:
    """An open event stream; `events` fills as they arrive, `next()` waits for one."""

    events: list[ServerSentEvent] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def next(self, count: int = 1) -> list[ServerSentEvent]:
        """Wait until `count` more events than were taken came, and take them."""
        async with asyncio.timeout(30), self.arrived:
            await self.arrived.wait_for(lambda: len(self.events) >= self._taken + count)
        taken = self.events[self._taken : self._taken + count]
        self._taken += count
        return taken

    async def until_answers(self, count: int) -> list[ServerSentEvent]:
        """Every event up to and including the `count`-th `answer` (or notice)."""
        async with asyncio.timeout(30), self.arrived:
            await self.arrived.wait_for(lambda: self._finished() >= count)
        return list(self.events)

    def _finished(self) -> int:
        return sum(1 for e in self.events if e.event in ("answer", "notice"))

    _taken: int = 0


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, token: str, *, last_event_id: str | None = None
) -> AsyncIterator[EventReader]:
    """Read /v1/events in the background until the block ends (the connection is dropped)."""
    reader = EventReader()
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}

    async def consume() -> None:
        async with aconnect_sse(
            client, "GET", "/v1/events", params={"token": token}, headers=headers
        ) as source:
            source.response.raise_for_status()
            reader.opened.set()
            async for event in source.aiter_sse():
                if not event.data:  # the `retry:` advice alone dispatches nothing per the spec
                    continue
                if event.event == "keep-alive":  # no id: the conversation's events alone
                    continue
                async with reader.arrived:
                    reader.events.append(event)
                    reader.arrived.notify_all()

    task = asyncio.create_task(consume())
    opened = asyncio.create_task(reader.opened.wait())
    await asyncio.wait([task, opened], return_when=asyncio.FIRST_COMPLETED)
    opened.cancel()
    if task.done():
        task.result()  # raises what went wrong
    try:
        yield reader
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def data(event: ServerSentEvent) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(event.data)
    return loaded


class GatedBackend:
    """Streams `words` one at a time, each only when the test releases it (`release(n)`);
    a test can then drop a stream mid-answer at a known point."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)
        self._allowed = asyncio.Semaphore(0)
        self.requests: list[GenerationRequest] = []

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self._allowed.release()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities("gated", "gated", 4096, exact_token_counts=False)

    async def start(self) -> None:
        return None

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [estimate_tokens(t) for t in texts]

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(estimate_tokens(m.content) + 4 for m in messages)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        for word in self.words:
            await self._allowed.acquire()
            yield Chunk(text=word)
        yield Chunk(usage=Usage(0, len(self.words)), finish_reason="stop")

    async def aclose(self) -> None:
        return None


def last_user_text(request: GenerationRequest) -> str:
    return [m for m in request.messages if m.role is Role.USER][-1].content


# The translate template's first line (config/prompts/translate.j2); the operator's system
# prompt comes before it.
TRANSLATE = re.compile(r"^Translate the user message from .+? into (\w+)\.", re.MULTILINE)


def translating(translations: Mapping[tuple[str, str], str]) -> Callable[[GenerationRequest], str]:
    """A scripted model that translates what `translations` knows ((target language, text) ->
    translation) when the core asks it to, gives back any other text as it was (already in
    that language), and otherwise answers "You said ..." to the customer."""

    def answer(request: GenerationRequest) -> str:
        first = request.messages[0]
        asked = TRANSLATE.search(first.content) if first.role is Role.SYSTEM else None
        text = last_user_text(request)
        if asked:
            return translations.get((asked.group(1), text), text)
        return f"You said {text}"

    return answer
