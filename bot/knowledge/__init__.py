"""The knowledge base: documents chunked into the history database, with an embedding of each
chunk, and searched by words (BM25) and meaning, the two rankings fused. See
docs/knowledge-base.md."""

from bot.knowledge.sample import load_sample_if_empty, remove_sample_if_superseded
from bot.knowledge.store import KnowledgeBase
from bot.knowledge.types import (
    AddReport,
    AnswerPolicy,
    DocumentInfo,
    FileResult,
    Outcome,
    Passage,
    SearchOptions,
)

__all__ = [
    "AddReport",
    "AnswerPolicy",
    "DocumentInfo",
    "FileResult",
    "KnowledgeBase",
    "Outcome",
    "Passage",
    "SearchOptions",
    "load_sample_if_empty",
    "remove_sample_if_superseded",
]
