"""Value objects of the knowledge base: what a loader yields, what search returns, and what
an ingestion run reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

# Counts the tokens of a text. Synchronous because chunking runs in a worker thread; the
# default estimate (bot.knowledge.chunker.estimate_tokens) is ~4 characters a token.
CountTokens = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class Section:
    """A stretch of a document under one location ("Setup > Redis", "page 3", "")."""

    location: str
    text: str


@dataclass(frozen=True, slots=True)
class LoadedDocument:
    title: str
    sections: list[Section]


@dataclass(frozen=True, slots=True)
class Chunk:
    location: str
    text: str
    token_count: int


@dataclass(frozen=True, slots=True)
class Passage:
    """A search hit. `score` is higher for better matches; it is comparable only within one
    result list (bm25 on SQLite, ts_rank on PostgreSQL)."""

    text: str
    title: str
    location: str
    source: str
    score: float

    @property
    def citation(self) -> str:
        """ "Title, location" for a reader; a Markdown heading path already starts with the
        title, so it stands alone."""
        if not self.location or self.location == self.title:
            return self.title
        if self.location.startswith(self.title + " > "):
            return self.location
        return f"{self.title}, {self.location}"


class Outcome(StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FileResult:
    source: str
    outcome: Outcome
    chunks: int = 0
    reason: str = ""


@dataclass(slots=True)
class AddReport:
    files: list[FileResult] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for f in self.files if f.outcome is outcome)

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.outcome is Outcome.FAILED]

    def summary(self) -> str:
        return ", ".join(f"{self.count(o)} {o.value}" for o in Outcome)


# Called after each file with (files done, files in all, that file's result).
Progress = Callable[[int, int, FileResult], None]


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    source: str
    title: str
    size: int
    chunks: int
    updated_at: datetime
