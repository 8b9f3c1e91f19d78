"""Builds the stores, backend, manager and adapters from Settings; one lifecycle.

    async with Parley(settings) as app:
        app.intake.register("console", adapter, access_rules)
        ...

Start-up order: schema check (SQLite migrates itself), database, cache, backend (probes its
context length and tokenizer), then the manager. Shutdown runs in reverse and lets turns in
flight finish (a stop bounds that wait with `manager.drain`, see adapters.kit.runner).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from types import TracebackType

from backends.base import Backend, estimate_tokens
from backends.factory import build_resilient_backend
from bot.budget import Budgets, MeteredBackend
from bot.conversation.context import ContextLoader
from bot.conversation.intake import Intake
from bot.conversation.manager import ConversationManager
from bot.conversation.summary import Summarizer
from bot.documents import DocumentReader
from bot.errors import BackendUnavailable, ConfigError, StorageError
from bot.handoff.desk import CoreDesk
from bot.handoff.note import NoteWriter
from bot.handoff.repo import HandoffRepository
from bot.handoff.translation import Translator
from bot.handoff.turns import HandoffTurns, register_human_intent
from bot.knowledge import KnowledgeBase
from bot.metrics import Metrics, multiprocess_mode
from bot.sentiment.classifier import warm as warm_sentiment
from bot.settings import Settings
from bot.skills.core_commands import register_core_commands
from bot.skills.intents import SkillRouting
from bot.skills.prompts import Prompts
from bot.skills.registry import register_skills
from bot.skills.router import CommandRouter
from bot.skills.services import SkillServices
from bot.storage.base import Cache
from bot.storage.cache import RedisCache, RedisRefused, build_cache
from bot.storage.database import create_engine, create_keeper_engine, create_relaxed_engine
from bot.storage.migrate import ensure_schema
from bot.storage.prefs import PrefsRepository
from bot.storage.sql_store import SqlStore

log = logging.getLogger(__name__)

# Tokens kept free beside the history: the system prompt and the new message get their own
# count, this covers the chat template's framing of them.
PROMPT_MARGIN_TOKENS = 32
# Longest pause between two tries to reach a model server that is still starting.
STARTUP_RETRY_MAX_S = 10.0


class Parley:
    def __init__(
        self, settings: Settings, *, backend: Backend | None = None, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._given_backend = backend
        self._stack = AsyncExitStack()
        self.backend: Backend | None = None
        self.store: SqlStore
        self.cache: Cache
        self.kb: KnowledgeBase
        self.prefs: PrefsRepository
        self.manager: ConversationManager
        # The core's handoff service (bot.handoff): bridges attach to it, agent APIs call it.
        self.desk: CoreDesk
        self.intake: Intake
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
        await ensure_schema(url, s.database.auto_migrate, timeout_s=s.database.timeout_s)
        db = s.database
        engine = create_engine(
            url,
            echo=db.echo,
            pool_size=db.pool_size,
            timeout_s=db.timeout_s,
            show_parameters=s.log_message_text,
        )
        relaxed = create_relaxed_engine(
            engine, pool_size=max(2, db.pool_size // 2), timeout_s=db.timeout_s
        )
        keeper = create_keeper_engine(engine, timeout_s=s.conversation.lock_ttl_s / 3)
        self.store = SqlStore(engine, relaxed, keeper)
        await self.store.start()
        self._stack.push_async_callback(self.store.aclose)
        self.metrics.watch_store(self.store, self.store.pools)
        if multiprocess_mode():  # a scrape reaches one worker: each publishes its own
            publishing = asyncio.create_task(self.metrics.publish_local())
            self._stack.push_async_callback(_cancelled, publishing)
        self.cache = cache = build_cache(s.redis)
        self._stack.push_async_callback(cache.aclose)
        if isinstance(cache, RedisCache):
            await _refused_by_redis(cache)
        self.backend = self._given_backend or build_resilient_backend(s.backend)
        if self.backend is not None:
            self._stack.push_async_callback(self.backend.aclose)
            self.metrics.watch_backend(self.backend)
            await self._start_backend(self.backend)
            # The one seam every model call passes: it counts them to the turn's budgets.
            self.backend = MeteredBackend(self.backend)
        self.budgets = Budgets.from_settings(
            s.budget, s.redis, self.store.relaxed_engine, observer=self.metrics
        )
        self._stack.push_async_callback(self.budgets.aclose)
        summarizer = Summarizer(
            self.backend, max_tokens=s.conversation.summary_tokens, count_tokens=self.count_tokens
        )
        context = ContextLoader(
            self.store,
            cache,
            summarizer,
            budget_tokens=await self._budget(),
            speaker_labels=s.conversation.group_speaker_labels,
        )
        register_core_commands(self.router)
        services = self._skill_services(cache)
        register_skills(self.router, services)
        register_human_intent(self.router, s.handoff)
        handoff = self._handoff(services)
        await self.desk.start()  # requests a stop or crash kept from the help desk
        backlog_turns = s.conversation.backlog_turns or s.database.pool_size
        self.manager = ConversationManager(
            store=self.store,
            cache=cache,
            liveness=cache if s.redis.url else None,  # Redis: read by every worker
            context=context,
            router=self.router,
            backend=self.backend,
            settings=s.conversation,
            generation=s.backend,
            count_tokens=self.count_tokens,
            backlog_turns=backlog_turns,
            max_turns=s.conversation.max_turns or s.backend.concurrency + backlog_turns,
            skills=SkillRouting(self.router, services),
            observer=self.metrics,
            budgets=self.budgets,
            handoff=handoff,
        )
        # The sentiment reading of every message needs these; loaded before traffic.
        await asyncio.to_thread(warm_sentiment)
        self.metrics.watch_turns(self.manager)
        self.manager.start()
        self._stack.push_async_callback(self.manager.aclose)
        self.intake = Intake(
            self.manager, cache, self.router, s.conversation, DocumentReader(s.documents)
        )
        self._stack.push_async_callback(self.intake.aclose)

    def log_serving(self) -> None:
        """The lines an operator reads once every adapter has started (not before: a start
        that fails is the one line saying why)."""
        if self.backend is None:
            log.info(
                "no language model (backend.kind is none): chat messages get one sentence; "
                "set PARLEY_BACKEND__KIND=vllm or openai (docs/backends.md)"
            )

    async def _start_backend(self, backend: Backend) -> None:
        """Start the backend; a model server that is not answering yet (still loading its
        model) is waited for up to backend.startup_wait_s, with a line at each try."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.backend.startup_wait_s
        delay = 1.0
        while True:
            try:
                await backend.start()
                return
            except BackendUnavailable as exc:
                if loop.time() + delay > deadline:
                    raise
                log.warning("waiting for the model server (%s); next try in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, STARTUP_RETRY_MAX_S)

    def _handoff(self, services: SkillServices) -> HandoffTurns:
        """The desk and the manager's side of it. The desk closes after the manager (its
        last events are handed on once the last turns finished)."""
        h = self.settings.handoff
        repo = HandoffRepository(self.store.engine, self.cache, relaxed=self.store.relaxed_engine)
        notes = NoteWriter(
            self.store, repo, services, agent_language=h.agent_language,
            history_messages=h.note_messages,
            extractive_sentences=self.settings.skills.extractive_sentences,
        )  # fmt: skip
        self.desk = CoreDesk(
            self.store, repo, notes, lambda cid, key: self.manager.schedule(cid, key),
            counter=self.metrics, stop_reply=lambda cid: self.manager.stop_turn(cid),
            replies_delivered=lambda cid, key: self.manager.agent_replies_delivered(cid, key),
        )  # fmt: skip
        self._stack.push_async_callback(self.desk.aclose)
        return HandoffTurns(self.desk, Translator(services), h, self.store)

    def _skill_services(self, cache: Cache) -> SkillServices:
        s = self.settings
        self.prefs = PrefsRepository(self.store.engine, self.store, cache)
        self.kb = KnowledgeBase.from_settings(self.store.engine, s.knowledge)
        return SkillServices(
            backend=self.backend,
            kb=self.kb,
            prefs=self.prefs,
            prompts=Prompts(s.skills.prompts_dir, system_prompt=s.conversation.system_prompt),
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
        room = history_room(self.settings, max_len, system)
        if room < conv.context_tokens:
            log.info("context budget capped at %d tokens by the model's context length", room)
        return min(conv.context_tokens, room)


def history_room(settings: Settings, max_model_len: int, system_tokens: int) -> int:
    """What a model's context leaves the conversation's history beside the system prompt and
    the reply; ConfigError where that is too little to run (`parley doctor` says the same)."""
    reply = settings.backend.max_tokens
    room = max_model_len - reply - system_tokens - PROMPT_MARGIN_TOKENS
    if room < settings.conversation.summary_tokens * 2:
        raise ConfigError(
            f"PARLEY_BACKEND__MAX_TOKENS: {reply} reply tokens leave too little of the "
            f"model's {max_model_len}-token context for the conversation"
        )
    return room


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _refused_by_redis(cache: RedisCache) -> None:
    """A Redis that refuses the URL's password or database number is a setting to fix: one
    line at start (exit status 2), not a worker that runs without its cache and fails every
    answer's delivery. One that is down or slow is waited out as ever (docs/database.md)."""
    try:
        await cache.ping()
    except RedisRefused as exc:
        raise ConfigError(f"redis.url: {exc}") from None
    except StorageError:
        pass  # an outage: the cache logged it, and goes on without Redis meanwhile
