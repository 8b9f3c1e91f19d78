"""Summaries of texts longer than the model's context: map each part, then combine.

The text is cut with `split_for_budget` so that each part, the prompt and the partial summary
fit the model's context (token counts from the backend's own tokenizer); `plan_map_reduce`
says how many partial summaries one combine call takes. Progress lines ("Summarising part 3
of 12…", in the user's language through `say`) are streamed before the final summary, so a
user waiting on a long job sees it move; the final summary is streamed as the model writes it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bot.phrases import N_
from bot.text import balanced_groups, part_budget, plan_map_reduce, split_for_budget
from bot.text.quoting import fence_for

from .router import Say, say_in_english
from .services import TEMPLATE_MARGIN_TOKENS, SkillServices, complete, stream_text

SEPARATOR = "\n\n---\n\n"
# A run of backticks in the text and in a partial summary (the model copying one from the
# text) is cut to this: each call's fence is one longer than the longest run, and counts
# twice (a pasted run of 20,000 made the fence alone longer than the model's context).
SHORT_BACKTICKS = "`" * 8
_LONG_BACKTICKS = re.compile("`{9,}")


@dataclass(frozen=True, slots=True)
class SummaryStyle:
    length: str  # "short" | "long"
    form: str  # "bullets" | "paragraph"
    tokens: int
    language: str  # an English language name, for the prompt

    def prompt_values(self) -> dict[str, object]:
        return {"length": self.length, "form": self.form, "language": self.language,
                "words": max(10, self.tokens * 3 // 4)}  # fmt: skip


class MapReduce:
    def __init__(
        self,
        services: SkillServices,
        style: SummaryStyle,
        session: str,
        say: Say = say_in_english,  # the turn's ctx.say, for the progress lines
    ) -> None:
        assert services.backend is not None
        self._s = services
        self._say = say
        self._backend = services.backend
        self._style = style
        self._session = session

    async def parts(self, text: str) -> list[str]:
        """`text` in parts that each fit one map call, beside the prompt and the two fence
        lines around a part (as long as the text's longest run of backticks: a pasted run of
        600 made every part too long for the model)."""
        probe = self._system("part", part=999, parts=999)
        prompt, fence = await self._s.count_many([probe, fence_for(text)])
        budget = part_budget(
            context_tokens=self._s.max_model_len(),
            prompt_tokens=prompt + 2 * fence + TEMPLATE_MARGIN_TOKENS,
            summary_tokens=self._style.tokens,
        )
        return await split_for_budget(
            text, budget, self._s.count_tokens, count_many=self._s.count_many
        )

    async def run(self, text: str) -> AsyncIterator[str]:
        text = _LONG_BACKTICKS.sub(SHORT_BACKTICKS, text)
        parts = await self.parts(text)
        if len(parts) <= 1:
            async for delta in self._call("whole", text, stream=True):
                yield delta
            return
        partials: list[str] = []
        for n, part in enumerate(parts, 1):
            said = await self._say(
                N_("Summarising part {part} of {parts}…"), part=n, parts=len(parts)
            )
            yield said + "\n"
            partials.append(await self._one("part", part, part=n, parts=len(parts)))
        async for delta in self._combine(partials):
            yield delta

    async def _combine(self, partials: list[str]) -> AsyncIterator[str]:
        number = 0
        while len(partials) > (fan_in := await self._fan_in(partials)):
            number += 1
            said = await self._say(
                N_("Combining {count} partial summaries (round {round})…"),
                count=len(partials),
                round=number,
            )
            yield said + "\n"
            groups = balanced_groups(partials, fan_in)
            partials = [await self._one("combine", SEPARATOR.join(g)) for g in groups]
        yield "\n"
        async for delta in self._call("combine", SEPARATOR.join(partials), stream=True):
            yield delta

    async def _fan_in(self, partials: list[str]) -> int:
        """How many of `partials` one combine call takes, beside its prompt and the two fence
        lines around them: one backtick longer than their longest run (a model may copy a run
        from the text; a partial summary's are cut to SHORT_BACKTICKS, so the fence is short:
        a fence as long as a 1,500-backtick run left no room for two summaries)."""
        prompt, fence = await self._s.count_many(
            [self._system("combine"), fence_for(SEPARATOR.join(partials))]
        )
        plan = plan_map_reduce(
            len(partials),
            context_tokens=self._s.max_model_len(),
            prompt_tokens=prompt + 2 * fence + TEMPLATE_MARGIN_TOKENS,
            summary_tokens=self._style.tokens,
        )
        return plan.fan_in

    async def _one(self, stage: str, text: str, **where: int) -> str:
        """A partial summary, its runs of backticks cut to SHORT_BACKTICKS."""
        summary = "".join([d async for d in self._call(stage, text, stream=False, **where)])
        return _LONG_BACKTICKS.sub(SHORT_BACKTICKS, summary)

    async def _call(
        self, stage: str, text: str, *, stream: bool, **where: int
    ) -> AsyncIterator[str]:
        request = self._s.request(
            self._system(stage, **where), text, max_tokens=self._style.tokens,
            session_id=self._session,
        )  # fmt: skip
        if stream:
            async for delta in stream_text(self._backend, request, mark_cut=True):
                yield delta
        else:
            yield await complete(self._backend, request)

    def _system(self, stage: str, **where: int) -> str:
        values = {"part": 0, "parts": 0, **where}
        return self._s.prompts.render("summarize", stage=stage, **self._style.prompt_values(),
                                      **values)  # fmt: skip
