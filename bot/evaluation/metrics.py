"""The figures of `parley eval`, computed with the maintained reference implementations:
ROUGE with Google's `rouge-score` (the ROUGE-1.5.5 re-implementation, Porter stemming), BLEU
and chrF with `sacrebleu` (corpus level, its default tokenisation). Both come with the `eval`
extra and are imported only when a figure needs them.

Scores are on 0-100 like the papers that report them; None means "not applicable" (no items,
or a figure that needs a model).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.errors import ConfigError

_CITATION = re.compile(r"\[(\d{1,2})\]")
INSTALL_HINT = "pip install 'parley[eval]'"


@dataclass(frozen=True, slots=True)
class Rouge:
    rouge1: float
    rouge2: float
    rouge_l: float


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> Rouge | None:
    """Mean F1 of ROUGE-1, ROUGE-2 and ROUGE-L. rouge-score keeps only ASCII letters and
    digits, so use it on English summaries."""
    if not hypotheses:
        return None
    scorer = _module("rouge_score.rouge_scorer").RougeScorer(
        ["rouge1", "rouge2", "rougeL"], use_stemmer=True
    )
    totals = [0.0, 0.0, 0.0]
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        scores = scorer.score(reference, hypothesis)  # (target, prediction)
        for n, name in enumerate(("rouge1", "rouge2", "rougeL")):
            totals[n] += scores[name].fmeasure
    r1, r2, rl = (100 * t / len(hypotheses) for t in totals)
    return Rouge(r1, r2, rl)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float | None:
    if not hypotheses:
        return None
    metric = _module("sacrebleu.metrics").BLEU()
    return float(metric.corpus_score(list(hypotheses), [list(references)]).score)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float | None:
    if not hypotheses:
        return None
    metric = _module("sacrebleu.metrics").CHRF()
    return float(metric.corpus_score(list(hypotheses), [list(references)]).score)


def contains_any(text: str, facts: Sequence[str]) -> bool:
    """Whether `text` states one of `facts`: case, spacing and Markdown emphasis
    do not matter."""
    flat = _plain(text)
    return any(_plain(fact) in flat for fact in facts)


def cited_numbers(text: str) -> list[int]:
    """The passage numbers an answer cites as [n], in order, each once."""
    return list(dict.fromkeys(int(n) for n in _CITATION.findall(text)))


def share(hits: int, total: int) -> float | None:
    return None if total == 0 else 100 * hits / total


def _plain(text: str) -> str:
    return " ".join(text.replace("*", "").replace("`", "").casefold().split())


def _module(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"parley eval needs {exc.name}: {INSTALL_HINT}") from None
