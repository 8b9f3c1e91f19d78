"""Text building blocks for the skills: platform-free, model-free, offline.

- `language`: `detect_language(text) -> Language | None` (offline, py3langid; None when the
  text is too short or the detector unsure) and `normalize_language("Deutsch") -> "de"`.
- `protect`: `protect(text, glossary) -> Protected` swaps code, URLs, emails, mentions,
  hashtags, emoji, HTML, Markdown link targets and glossary terms for `⟦N⟧` placeholders;
  `restore(translated, protected) -> Restored` puts them back and reports dropped ones.
- `extractive`: `summarize_extractive(text, max_sentences=, form=)`, the most central
  sentences (TF-IDF + TextRank) in their original order, for any script.
- `chunking`: `split_for_budget(text, budget_tokens, count)` cuts on paragraph, sentence and
  word boundaries, never inside a code block that fits; `plan_map_reduce(n_parts, ...)` says
  how many partial summaries each combine call takes.
- `sentences`: `split_sentences(text)`, multilingual and abbreviation-aware.
- `patterns`: the regular expressions for the non-prose parts of a message.
"""

from .chunking import (
    MapReducePlan,
    balanced_groups,
    part_budget,
    plan_map_reduce,
    split_for_budget,
)
from .extractive import central, rank_sentences, summarize_extractive, top_sentences
from .language import (
    Language,
    LanguageDetector,
    LanguageName,
    default_detector,
    detect_language,
    language_name,
    normalize_language,
)
from .protect import Protected, Restored, Span, SpanKind, protect, restore
from .sentences import split_sentences

__all__ = [
    "Language",
    "LanguageDetector",
    "LanguageName",
    "MapReducePlan",
    "Protected",
    "Restored",
    "Span",
    "SpanKind",
    "balanced_groups",
    "central",
    "default_detector",
    "detect_language",
    "language_name",
    "normalize_language",
    "part_budget",
    "plan_map_reduce",
    "protect",
    "rank_sentences",
    "restore",
    "split_for_budget",
    "split_sentences",
    "summarize_extractive",
    "top_sentences",
]
