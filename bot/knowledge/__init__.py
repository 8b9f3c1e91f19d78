"""The knowledge base: documents chunked into the history database, with an embedding of each
chunk, and searched by words (BM25) and meaning, the two rankings fused. See
docs/knowledge-base.md.

`KnowledgeBase` and the sample's functions are imported when first named, not with the
package: the document reader's child process (bot.documents) needs only the loaders
(`bot.knowledge.html_loader`, `bot.knowledge.loaders`), and importing the store with them
cost it SQLAlchemy, numpy and the embeddings' libraries (about a second and 100 MB) for
every document read."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from bot.knowledge.types import (
    AddReport,
    AnswerPolicy,
    DocumentInfo,
    FileResult,
    Outcome,
    Passage,
    SearchOptions,
)

if TYPE_CHECKING:
    from bot.knowledge.sample import load_sample_if_empty, remove_sample_if_superseded
    from bot.knowledge.store import KnowledgeBase

_IMPORTED_WHEN_NAMED = {
    "KnowledgeBase": "bot.knowledge.store",
    "load_sample_if_empty": "bot.knowledge.sample",
    "remove_sample_if_superseded": "bot.knowledge.sample",
}

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


def __getattr__(name: str) -> object:
    if name not in _IMPORTED_WHEN_NAMED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_IMPORTED_WHEN_NAMED[name]), name)
