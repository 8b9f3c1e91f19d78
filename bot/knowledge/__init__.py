"""The knowledge base: documents chunked into the history database and searched with its own
full-text engine. See docs/knowledge-base.md."""

from bot.knowledge.sample import load_sample_if_empty
from bot.knowledge.store import KnowledgeBase
from bot.knowledge.types import (
    AddReport,
    DocumentInfo,
    FileResult,
    Outcome,
    Passage,
)

__all__ = [
    "AddReport",
    "DocumentInfo",
    "FileResult",
    "KnowledgeBase",
    "Outcome",
    "Passage",
    "load_sample_if_empty",
]
