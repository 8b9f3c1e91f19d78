"""Value objects of the knowledge base: what a loader yields, what search returns, and what
an ingestion run reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from bot.errors import ConfigError
from bot.text.storable import text_problem

# Counts the tokens of a text. Synchronous because chunking runs in a worker thread; the
# default estimate (backends.base.estimate_tokens) is ~4 characters a token (a CJK character: 1).
CountTokens = Callable[[str], int]

# Characters kept of a title and of a heading path: a citation is one line of an answer. A
# loader cuts each heading to it as it reads it, so a long heading is never copied whole into
# every section under it.
MAX_CITED_CHARS = 500


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
class SearchOptions:
    """How KnowledgeBase.search ranks (see bot.knowledge.ranking and docs/knowledge-base.md)."""

    # Chunks taken from each ranking (full text, semantic) before fusion.
    candidates: int = 50
    # The semantic ranking's weight in the fusion, the full-text one's being 1; 0 turns it off.
    # `python -m bench.kb_bench --tune` shows how it was chosen.
    semantic_weight: float = 0.25
    # A chunk that matched none of the question's words counts only at or above this cosine
    # similarity, so a question about nothing in the documents still finds nothing. Chosen
    # between unrelated questions (up to ~0.2 on Parley's docs) and paraphrases (0.25-0.5).
    min_similarity: float = 0.25
    # Pseudo-relevance feedback on the semantic side (Rocchio): the question's vector moves
    # towards the mean of the `feedback_chunks` best chunks of a first fused ranking by
    # `feedback_weight`, then the semantic ranking is computed again. 0 chunks turns it off.
    # Off by default: on Parley's own docs (`--tune`) 5 chunks x 2.0 with semantic_weight 0.5
    # raised MRR from 0.694 to 0.751, but on the evaluation sets it moved recall@3 by +0.015
    # (click) and -0.031 (attrs): no gain that carries over (docs/knowledge-base.md).
    feedback_chunks: int = 0
    feedback_weight: float = 2.0
    # Each section's own title (the last heading of its path) embedded too, a chunk matching
    # by the better of its own vector and its title's: a title is a short summary of its
    # section, closer in meaning to a question than a long passage's averaged vector. Chosen
    # on Parley's own docs (`--tune`: MRR 0.702 -> 0.729, recall@1 0.585 -> 0.634).
    title_vectors: bool = True
    # Each paragraph of a chunk (up to 8) embedded too, in memory: a chunk counts with the
    # best of its own, its title's and its paragraphs' similarity.
    part_vectors: bool = False
    # Query expansion: each question word's `expansion_words` nearest words of the corpus
    # (by their embeddings, at a similarity of at least `expansion_min_similarity`) join the
    # full-text query at `expansion_weight` times their similarity. 0 turns it off.
    expansion_weight: float = 0.5
    expansion_words: int = 3
    expansion_min_similarity: float = 0.5
    # Above this many chunks, word statistics and vectors are not kept in memory: search is the
    # database's full-text engine alone.
    max_memory_chunks: int = 100_000


@dataclass(frozen=True, slots=True)
class AnswerPolicy:
    """How /ask uses search's passages when a model is configured (knowledge.rerank,
    knowledge.rerank_candidates, knowledge.grounding; see bot.knowledge.rerank)."""

    rerank: bool = False
    rerank_candidates: int = 8
    # True ("strict"): a reranking model's verdict that no passage answers means "not found".
    strict: bool = True


@dataclass(frozen=True, slots=True)
class Passage:
    """A search hit: one section's best chunk with its matching neighbours. `score` is the
    fused rank score in (0, 1], 1.0 meaning first in every ranking."""

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


def collection_name(collection: str) -> str:
    """A collection as a sentence names it ("" is the default one)."""
    return f"'{collection}'" if collection else "the default collection"


@dataclass(frozen=True, slots=True)
class FileResult:
    source: str
    outcome: Outcome
    chunks: int = 0
    reason: str = ""
    # The collection the document was in when adding it to another one moved it there (a
    # document is in one collection only); None when it was new or stayed where it was.
    moved_from: str | None = None
    collection: str = ""

    @property
    def move(self) -> str:
        """ "moved from the default collection to 'shop'", or "" for a file that did not move:
        a move takes the document out of the searches of the collection it left."""
        if self.moved_from is None:
            return ""
        left, joined = collection_name(self.moved_from), collection_name(self.collection)
        return f"moved from {left} to {joined}"


@dataclass(slots=True)
class AddReport:
    files: list[FileResult] = field(default_factory=list)
    # Documents of the folders added whose files are gone: removed.
    removed: list[str] = field(default_factory=list)
    # Folders added that hold no file to add now (not mounted?), with documents stored from
    # them: those are kept, not taken for gone (each as its prefix, ending in "/").
    kept: list[str] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for f in self.files if f.outcome is outcome)

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.outcome is Outcome.FAILED]

    @property
    def moved(self) -> list[FileResult]:
        return [f for f in self.files if f.moved_from is not None]

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(o)} {o.value}" for o in Outcome)
        return counts + (f", {len(self.removed)} removed (files gone)" if self.removed else "")


# Called after each file with (files done, files in all, that file's result).
Progress = Callable[[int, int, FileResult], None]


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    source: str
    title: str
    size: int
    chunks: int
    updated_at: datetime
    collection: str = ""


COLLECTION_MAX = 255  # kb_documents.collection's (and support_sites') length


def check_collection(collection: str, what: str = "collection") -> None:
    """A collection name a database can keep (raises ConfigError naming `what`): no
    control character, at most COLLECTION_MAX characters."""
    if problem := text_problem(collection):
        raise ConfigError(f"{what}: {problem}")
    if len(collection) > COLLECTION_MAX:
        raise ConfigError(f"{what}: at most {COLLECTION_MAX} characters")
