"""Runs the evaluation sets through the real app and computes the figures.

Every item is one message to a fresh conversation of a running `Parley` (the configured
backend, prompts and skill settings; a temporary SQLite database, an in-process cache and no
rate limit, so the operator's history is never touched), answered by the conversation
manager exactly as a user's message is. The knowledge base of the question-answering items
is loaded from `kb_paths` (by default the sample folder, Parley's own docs/).

Intent routing is judged on the decision, not on the skill's answer: the registered patterns
first, then, where the backend supports structured output and the message hints at a task,
the model's schema-constrained choice, else chat (the order of bot.skills.intents).
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from backends.base import Backend
from bot.app import Parley
from bot.errors import BackendError
from bot.knowledge import Passage
from bot.settings import Settings
from bot.skills.intents import CHAT, TASK_HINT, choice_model
from bot.skills.prompts import Prompts
from bot.types import ChatMessage, ConversationKey, Incoming, Role, User

from . import metrics
from .sets import AskItem, EvalSet, IntentItem, SummarizeItem, TranslateItem

PLATFORM = "eval"
EVALUATOR = User(PLATFORM, "evaluator", "Evaluator")
SOURCES_HEADING = "\n\nSources:\n"
# Routing decisions counted by how they were reached.
VIA_PATTERN, VIA_MODEL, VIA_DEFAULT = "pattern", "model", "default"


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str = ""  # "%" for shares
    note: str = ""


@dataclass
class SkillResult:
    skill: str
    items: int
    seconds: float
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Report:
    model: str
    results: list[SkillResult] = field(default_factory=list)


class _Answers:
    """The reply sink: each conversation's replies, whole."""

    def __init__(self) -> None:
        self.replies: dict[ConversationKey, list[str]] = defaultdict(list)

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        self.replies[key].append("".join([chunk async for chunk in chunks]))


class Evaluation:
    def __init__(self, app: Parley, answers: _Answers) -> None:
        self._app = app
        self._answers = answers
        self._ids = itertools.count(1)
        self._has_model = app.backend is not None

    async def ask_app(self, skill: str, text: str) -> str:
        """`text` sent to a new conversation; the reply."""
        key = ConversationKey(PLATFORM, f"{skill}-{next(self._ids)}")
        incoming = Incoming(key, EVALUATOR, text, idempotency_key=f"{PLATFORM}:{key.chat_id}")
        await self._app.manager.handle(incoming)
        return "\n".join(self._answers.replies.pop(key, [])).strip()

    async def summarize(self, items: Sequence[SummarizeItem]) -> SkillResult:
        started = time.monotonic()
        summaries = [await self.ask_app("summarize", f"/summarize paragraph {i.text}")
                     for i in items]  # fmt: skip
        scores = metrics.rouge(summaries, [i.reference for i in items])
        note = "" if self._has_model else "extractive (no model)"
        values = (
            (None, None, None) if scores is None else (scores.rouge1, scores.rouge2, scores.rouge_l)
        )
        figures = [Figure(f"ROUGE-{n} F1", value, note=note)
                   for n, value in zip("12L", values, strict=True)]  # fmt: skip
        return SkillResult("summarize", len(items), time.monotonic() - started, figures)

    async def translate(self, items: Sequence[TranslateItem]) -> SkillResult:
        started = time.monotonic()
        if not self._has_model:
            figures = [Figure("BLEU", None, note="needs a model"),
                       Figure("chrF", None, note="needs a model")]  # fmt: skip
            return SkillResult("translate", len(items), 0.0, figures)
        outputs = [await self.ask_app("translate", f"/translate to {i.target} {i.text}")
                   for i in items]  # fmt: skip
        references = [i.reference for i in items]
        figures = [Figure("BLEU", metrics.bleu(outputs, references)),
                   Figure("chrF", metrics.chrf(outputs, references))]  # fmt: skip
        for target in sorted({i.target for i in items}):
            picked = [n for n, i in enumerate(items) if i.target == target]
            hyps, refs = [outputs[n] for n in picked], [references[n] for n in picked]
            note = f"{len(picked)} items"
            figures.append(Figure(f"  into {target}: BLEU", metrics.bleu(hyps, refs), note=note))
            figures.append(Figure(f"  into {target}: chrF", metrics.chrf(hyps, refs), note=note))
        return SkillResult("translate", len(items), time.monotonic() - started, figures)

    async def ask(self, items: Sequence[AskItem]) -> SkillResult:
        started = time.monotonic()
        k = self._app.settings.skills.qa_passages
        found = contains = cited = cited_right = 0
        for item in items:
            passages = await self._retrieved(item.question)
            relevant = [_is_relevant(p, item) for p in passages]
            found += any(relevant)
            answer = await self.ask_app("ask", f"/ask {item.question}")
            body = answer.split(SOURCES_HEADING)[0]
            contains += metrics.contains_any(body, item.facts)
            numbers = [n for n in metrics.cited_numbers(body) if 1 <= n <= len(passages)]
            cited += len(numbers)
            cited_right += sum(relevant[n - 1] for n in numbers)
        note = "" if self._has_model else "answers quoted from the knowledge base (no model)"
        figures = [
            Figure(f"retrieval recall@{k}", metrics.share(found, len(items)), "%"),
            Figure("answer contains the fact", metrics.share(contains, len(items)), "%", note),
            Figure("citation precision", metrics.share(cited_right, cited), "%",
                   f"{cited} citations"),
        ]  # fmt: skip
        return SkillResult("ask", len(items), time.monotonic() - started, figures)

    async def _retrieved(self, question: str) -> list[Passage]:
        """The passages /ask numbers for `question` (the same search and score floor)."""
        skills = self._app.settings.skills
        passages = await self._app.kb.search(question, skills.qa_passages)
        return [p for p in passages if p.score > skills.qa_min_score]

    async def intent(self, items: Sequence[IntentItem]) -> SkillResult:
        started = time.monotonic()
        right = 0
        via: dict[str, int] = defaultdict(int)
        for item in items:
            decision, how = await self.route(item.text)
            via[how] += 1
            right += decision == item.expected
        note = ", ".join(f"{count} by {how}" for how, count in sorted(via.items()))
        figures = [Figure("accuracy", metrics.share(right, len(items)), "%", note)]
        return SkillResult("intent", len(items), time.monotonic() - started, figures)

    async def route(self, text: str) -> tuple[str, str]:
        """(the skill a plain message goes to, how that was decided)."""
        router = self._app.router
        found = router.match_intent(text)
        if found is not None:
            return found[0].name, VIA_PATTERN
        backend = self._app.backend
        if backend is None or not self._model_routes() or not TASK_HINT.search(text):
            return CHAT, VIA_DEFAULT
        from backends.structured import generate_json

        system = Prompts(self._app.settings.skills.prompts_dir).render(
            "intent", intents=router.intents
        )
        messages = [ChatMessage(Role.SYSTEM, system), ChatMessage(Role.USER, text)]
        try:
            choice = await generate_json(backend, messages, choice_model(router.intents),
                                         max_tokens=128)  # fmt: skip
        except BackendError:
            return CHAT, VIA_DEFAULT  # the app answers such a message as chat too
        return str(getattr(choice, "intent", CHAT)), VIA_MODEL

    def _model_routes(self) -> bool:
        from bot.skills.intents import STRUCTURED_BACKENDS

        backend = self._app.backend
        return (
            backend is not None
            and self._app.settings.skills.model_intents
            and backend.capabilities.name in STRUCTURED_BACKENDS
        )


def _is_relevant(passage: Passage, item: AskItem) -> bool:
    if not passage.source.endswith(item.source):
        return False
    return not item.heading or item.heading.casefold() in passage.location.casefold()


def eval_settings(settings: Settings, database: Path) -> Settings:
    """The operator's settings with a private database and cache, and no rate limit."""
    return settings.model_copy(
        update={
            "database": settings.database.model_copy(
                update={"url": SecretStr(f"sqlite+aiosqlite:///{database}"), "auto_migrate": True}
            ),
            "redis": settings.redis.model_copy(update={"url": None}),
            "conversation": settings.conversation.model_copy(update={"rate_limit_messages": 0}),
            "knowledge": settings.knowledge.model_copy(update={"load_sample": False}),
        }
    )


async def evaluate(
    settings: Settings,
    sets: EvalSet,
    *,
    kb_paths: Sequence[Path],
    backend: Backend | None = None,
) -> Report:
    """Run every skill that has items; `backend` replaces the configured one (tests)."""
    with tempfile.TemporaryDirectory(prefix="parley-eval-") as folder:
        private = eval_settings(settings, Path(folder) / "eval.db")
        async with Parley(private, backend=backend) as app:
            answers = _Answers()
            app.manager.attach(PLATFORM, answers)
            if sets.ask:
                await app.kb.add(kb_paths)
            evaluation = Evaluation(app, answers)
            model = app.backend.capabilities.model if app.backend is not None else ""
            report = Report(model or "none (no model configured)")
            if sets.summarize:
                report.results.append(await evaluation.summarize(sets.summarize))
            if sets.translate:
                report.results.append(await evaluation.translate(sets.translate))
            if sets.ask:
                report.results.append(await evaluation.ask(sets.ask))
            if sets.intent:
                report.results.append(await evaluation.intent(sets.intent))
    return report
