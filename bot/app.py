"""Builds the stores, backend, manager and adapters from Settings; one lifecycle.

    async with Parley(settings) as app:
        app.manager.attach("console", sink)
        ...

Start-up order: schema check (SQLite migrates itself), database, cache, backend (probes its
context length and tokenizer), then the manager. Shutdown runs in reverse and lets turns in
flight finish.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from types import TracebackType

from backends.base import Backend, estimate_tokens
from backends.factory import build_resilient_backend
from bot.conversation.context import ContextLoader
from bot.conversation.manager import ConversationManager
from bot.conversation.summary import Summarizer
from bot.errors import ConfigError
from bot.knowledge import KnowledgeBase
from bot.settings import Settings
from bot.skills.core_commands import register_core_commands
from bot.skills.intents import SkillRouting
from bot.skills.prompts import Prompts
from bot.skills.registry import register_skills
from bot.skills.router import CommandRouter
from bot.skills.services import SkillServices
from bot.storage.base import Cache
from bot.storage.cache import build_cache
from bot.storage.database import create_engine
from bot.storage.migrate import ensure_schema
from bot.storage.prefs import PrefsRepository
from bot.storage.sql_store import SqlStore

log = logging.getLogger(__name__)

# Tokens kept free beside the history: the system prompt and the new message get their own
# count, this covers the chat template's framing of them.
PROMPT_MARGIN_TOKENS = 32


class Parley:
    def __init__(self, settings: Settings, *, backend: Backend | None = None) -> None:
        self.settings = settings
        self._given_backend = backend
        self._stack = AsyncExitStack()
        self.backend: Backend | None = None
        self.store: SqlStore
        self.kb: KnowledgeBase
        self.prefs: PrefsRepository
        self.manager: ConversationManager
        self.router = CommandRouter()

    async def __aenter__(self) -> Parley:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        s = self.settings
        url = s.database.url.get_secret_value()
        await ensure_schema(url, s.database.auto_migrate)
        engine = create_engine(url, echo=s.database.echo, pool_size=s.database.pool_size)
        self.store = SqlStore(engine)
        await self.store.start()
        self._stack.push_async_callback(self.store.aclose)
        cache = build_cache(s.redis)
        self._stack.push_async_callback(cache.aclose)
        self.backend = self._given_backend or build_resilient_backend(s.backend)
        if self.backend is not None:
            await self.backend.start()
            self._stack.push_async_callback(self.backend.aclose)
        summarizer = Summarizer(
            self.backend, max_tokens=s.conversation.summary_tokens, count_tokens=self.count_tokens
        )
        context = ContextLoader(
            self.store,
            cache,
            summarizer,
            budget_tokens=await self._budget(),
        )
        register_core_commands(self.router)
        services = self._skill_services(cache)
        register_skills(self.router, services)
        self.manager = ConversationManager(
            store=self.store,
            cache=cache,
            context=context,
            router=self.router,
            backend=self.backend,
            settings=s.conversation,
            generation=s.backend,
            count_tokens=self.count_tokens,
            skills=SkillRouting(self.router, services),
        )
        self._stack.push_async_callback(self.manager.aclose)

    def _skill_services(self, cache: Cache) -> SkillServices:
        s = self.settings
        self.prefs = PrefsRepository(self.store.engine, cache)
        self.kb = KnowledgeBase(
            self.store.engine, max_file_bytes=s.knowledge.max_file_mb * 1_000_000
        )
        return SkillServices(
            backend=self.backend,
            kb=self.kb,
            prefs=self.prefs,
            prompts=Prompts(s.skills.prompts_dir),
            settings=s.skills,
            generation=s.backend,
            count_tokens=self.count_tokens,
        )

    async def count_tokens(self, text: str) -> int:
        if self.backend is None:
            return estimate_tokens(text)
        return (await self.backend.count_tokens([text]))[0]

    async def _budget(self) -> int:
        """History budget: the configured one, capped by what the model's context leaves."""
        conv = self.settings.conversation
        if self.backend is None:
            return conv.context_tokens
        max_len = self.backend.capabilities.max_model_len
        system = await self.count_tokens(conv.system_prompt)
        room = max_len - self.settings.backend.max_tokens - system - PROMPT_MARGIN_TOKENS
        if room < conv.summary_tokens * 2:
            raise ConfigError(
                f"PARLEY_BACKEND__MAX_TOKENS: {self.settings.backend.max_tokens} reply tokens "
                f"leave too little of the model's {max_len}-token context for the conversation"
            )
        if room < conv.context_tokens:
            log.info("context budget capped at %d tokens by the model's context length", room)
        return min(conv.context_tokens, room)
