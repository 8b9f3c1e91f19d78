"""Evaluation sets: JSONL files, one item per line, each naming the skill it tests.

    {"skill": "summarize", "text": "...", "reference": "a reference summary"}
    {"skill": "translate", "text": "...", "target": "fr", "reference": "a reference translation"}
    {"skill": "ask", "question": "...", "fact": "thirty seconds", "source": "conversations.md"}
    {"skill": "intent", "text": "...", "expected": "translate"}

`fact` may also be a list of accepted phrasings; `source` is the end of the path of the
document that answers the question (matched against the knowledge base's sources), and an
optional `heading` narrows it to passages under that heading. `expected` is an intent name
(ask, summarize, translate, human) or "chat"; `target` a language Parley knows. Blank lines
and lines starting with `#` are skipped. One file may mix skills. A malformed line stops the
run with its file and line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from bot.errors import ConfigError
from bot.text.language import normalize_language

SKILLS = ("summarize", "translate", "ask", "intent")
# What a plain message can be routed to: the intents Parley registers, and "chat".
INTENTS = ("ask", "summarize", "translate", "human", "chat")
# A set is read whole: a bigger file (or a device that never ends) is refused.
MAX_SET_BYTES = 64 * 1024 * 1024


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SummarizeItem(_Item):
    skill: Literal["summarize"]
    text: str = Field(min_length=1)
    reference: str = Field(min_length=1)


class TranslateItem(_Item):
    skill: Literal["translate"]
    text: str = Field(min_length=1)
    target: str = Field(min_length=2)
    reference: str = Field(min_length=1)
    # Informational (the skill detects it); kept so a set can be read by language pair.
    source: str = ""

    @field_validator("target")
    @classmethod
    def _known_language(cls, value: str) -> str:
        normalize_language(value)  # its ValueError names the language and gives examples
        return value


class AskItem(_Item):
    skill: Literal["ask"]
    question: str = Field(min_length=1)
    fact: str | list[str]
    source: str = Field(min_length=1)
    heading: str = ""

    @property
    def facts(self) -> list[str]:
        return [self.fact] if isinstance(self.fact, str) else list(self.fact)


class IntentItem(_Item):
    skill: Literal["intent"]
    text: str = Field(min_length=1)
    expected: Literal["ask", "summarize", "translate", "human", "chat"]


Item = SummarizeItem | TranslateItem | AskItem | IntentItem
# The `skill` field picks the model, so an error names the fields of that skill only.
_ITEM: TypeAdapter[Item] = TypeAdapter(Annotated[Item, Field(discriminator="skill")])


@dataclass
class EvalSet:
    """Items grouped by skill, in file order."""

    summarize: list[SummarizeItem] = field(default_factory=list)
    translate: list[TranslateItem] = field(default_factory=list)
    ask: list[AskItem] = field(default_factory=list)
    intent: list[IntentItem] = field(default_factory=list)

    def add(self, item: Item) -> None:
        getattr(self, item.skill).append(item)

    def limited(self, limit: int | None) -> EvalSet:
        """The first `limit` items of each skill (all with None)."""
        return EvalSet(
            self.summarize[:limit], self.translate[:limit], self.ask[:limit], self.intent[:limit]
        )

    def count(self, skill: str) -> int:
        return len(getattr(self, skill))


def load_sets(paths: Iterable[Path]) -> EvalSet:
    found = EvalSet()
    for path in paths:
        for item in read_jsonl(path):
            found.add(item)
    return found


def read_jsonl(path: Path) -> list[Item]:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_SET_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"evaluation set {path}: {exc.strerror}") from None
    if len(data) > MAX_SET_BYTES:
        raise ConfigError(f"evaluation set {path}: over {MAX_SET_BYTES // 2**20} MB")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"evaluation set {path}, line {number}: not UTF-8 text") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            items.append(_ITEM.validate_python(json.loads(line)))
        except RecursionError:
            raise ConfigError(f"evaluation set {path}, line {number}: nested too deeply") from None
        except (json.JSONDecodeError, ValidationError) as exc:
            reason = (
                str(exc).splitlines()[0]
                if isinstance(exc, json.JSONDecodeError)
                else (
                    "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                )
            )
            raise ConfigError(f"evaluation set {path}, line {number}: {reason}") from None
    return items
