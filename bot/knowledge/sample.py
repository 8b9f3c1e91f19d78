"""The sample knowledge base: Parley's own user guide (docs/), a demo loaded on the first start
(with the embedded SQLite database; a server database starts empty) so that a fresh install
can answer questions about itself before the operator adds anything.

It is a demo, not content: once the knowledge base holds a document of the operator's own,
the sample's documents are removed (by `parley kb add`, and at the next start), so answers
never mix Parley's manual into the operator's product. The sample is what Parley loaded as
the sample, marked so in the database (kb_documents.sample): never a document the operator
added, whatever its folder (a `docs/` of their own, or Parley's own docs/ added on purpose).
"""

from __future__ import annotations

import logging
from pathlib import Path

from bot.knowledge.store import KnowledgeBase
from bot.knowledge.types import AddReport
from bot.settings import KnowledgeSettings

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def sample_folder(sample_dir: str) -> Path | None:
    """`sample_dir`, a relative one under Parley's own folder (never the working directory's:
    an operator's own `docs/` is no demo); None if it is not a folder (an installed package
    may ship without docs/)."""
    path = Path(sample_dir).expanduser()
    folder = path if path.is_absolute() else PROJECT_ROOT / path
    return folder if folder.is_dir() else None


async def load_sample_if_empty(kb: KnowledgeBase, settings: KnowledgeSettings) -> AddReport | None:
    """Load the sample folder when the knowledge base has no document, or remove the sample
    when the operator's own documents are there; None when nothing was loaded. Emptiness is
    the test, so an operator who removes everything gets the sample back on the next start
    unless `knowledge.load_sample` is false."""
    if await remove_sample_if_superseded(kb):
        return None
    if not settings.load_sample or not await kb.is_empty():
        return None
    folder = sample_folder(settings.sample_dir)
    if folder is None:
        log.info("knowledge base: sample folder %s not found; starting empty", settings.sample_dir)
        return None
    report = await kb.add([folder], sample=True)
    log.info("knowledge base: loaded the sample from %s (%s)", folder, report.summary())
    for failed in report.failed:
        log.warning("knowledge base: %s: %s", failed.source, failed.reason)
    return report


async def remove_sample_if_superseded(kb: KnowledgeBase) -> int:
    """Remove the documents loaded as the sample when any other document is in the knowledge
    base; returns how many were removed."""
    removed = await kb.remove_sample()
    if removed:
        log.info("knowledge base: removed the sample (%d documents): your own documents replace it",
                 removed)  # fmt: skip
    return removed
