"""Extractive summary without a model: the most central sentences, in their original order.

Each sentence becomes a TF-IDF vector; sentences are linked by cosine similarity and ranked
with TextRank (PageRank on that graph), so a sentence scores high when it shares rare words
with many others, which is what "central to the text" means without understanding it.
Words are the features where the script separates them with spaces; Chinese, Japanese, Thai
and similar scripts have no spaces, so overlapping character pairs stand in for words there.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from .patterns import FENCED_CODE
from .sentences import split_sentences

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Matrix = npt.NDArray[np.float64]

# numpy is imported where a summary is computed, not with the module: bot.text's package
# imports this module, and the document reader's child process (bot.documents), which needs
# only bot.text.encoding, would otherwise load numpy and start its BLAS threads for nothing.
Form = Literal["bullets", "paragraph"]

_NO_SPACE_SCRIPTS = (
    "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana, CJK ideographs
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff"  # Thai, Lao, Myanmar, Khmer
)
_TOKEN = re.compile(
    rf"(?P<dense>[{_NO_SPACE_SCRIPTS}]+)|(?P<word>(?:(?![{_NO_SPACE_SCRIPTS}])[^\W_])+)"
)
_LIST_MARKER = re.compile(r"^(?:[-*•+]|\d{1,3}[.)]|#{1,6})\s+")
_WIDE_TERMINATOR = ("。", "！", "？", "．")
_DAMPING = 0.85
_ITERATIONS = 100
_TOLERANCE = 1e-9
# Sentences ranked together: TextRank's matrices grow with their square (and the TF-IDF one
# with the vocabulary), so a long text (a document reaches 200,000 characters) asked for tens
# of gigabytes. A longer text is ranked in groups of consecutive sentences; the best of each
# group are ranked again, until one group is left.
GROUP_SENTENCES = 200
# Characters of a sentence its features are read from when choosing: with the group size, a
# bound on the vocabulary (the other side of the TF-IDF matrix) however long a sentence is.
FEATURE_CHARS = 400


def summarize_extractive(text: str, *, max_sentences: int = 5, form: Form = "bullets") -> str:
    """The `max_sentences` most central sentences of the text, as bullets or one paragraph."""
    if max_sentences < 1:
        raise ValueError("max_sentences must be at least 1")
    chosen = top_sentences(text, max_sentences)
    return format_sentences(chosen, form)


def top_sentences(text: str, max_sentences: int) -> list[str]:
    """The most central sentences, in the order they appear; code blocks are never chosen."""
    sentences = _unique(_clean(s) for s in split_sentences(FENCED_CODE.sub("\n\n", text)))
    if len(sentences) <= max_sentences:
        return sentences
    return [sentences[i] for i in central(sentences, max_sentences)]


def central(sentences: Sequence[str], count: int) -> list[int]:
    """The indices of the `count` most central sentences, in order: TextRank, in groups of
    GROUP_SENTENCES on a long text (each sentence read up to FEATURE_CHARS, the best of each
    group ranked again), so memory stays bounded, not the square of the sentences."""
    rows = [features(s[:FEATURE_CHARS]) for s in sentences]
    candidates = list(range(len(rows)))
    keep = max(1, min(count, GROUP_SENTENCES // 4))  # each round leaves a quarter
    while len(candidates) > GROUP_SENTENCES:
        groups = [
            candidates[i : i + GROUP_SENTENCES] for i in range(0, len(candidates), GROUP_SENTENCES)
        ]
        candidates = [i for group in groups for i in _best(rows, group, keep)]
    return sorted(_best(rows, candidates, count))


def _best(rows: Sequence[Counter[str]], candidates: list[int], count: int) -> list[int]:
    """The `count` most central of `candidates` (indices into `rows`), best first."""
    scores = _rank([rows[i] for i in candidates])
    order = sorted(range(len(candidates)), key=lambda j: (-scores[j], j))[:count]
    return [candidates[j] for j in order]


def rank_sentences(sentences: Sequence[str]) -> list[float]:
    """A TextRank centrality score per sentence (they sum to 1)."""
    return _rank([features(s) for s in sentences])


def _rank(rows: Sequence[Counter[str]]) -> list[float]:
    if not rows:
        return []
    return [float(x) for x in _pagerank(_similarity(_tfidf(rows)))]


def features(sentence: str) -> Counter[str]:
    """Lower-cased words, and character bigrams for scripts written without spaces."""
    counts: Counter[str] = Counter()
    for match in _TOKEN.finditer(sentence):
        dense, word = match.group("dense"), match.group("word")
        if dense:
            counts.update(dense[i : i + 2] for i in range(max(1, len(dense) - 1)))
        elif word and (len(word) > 1 or not word.isascii()):
            counts[word.casefold()] += 1
    return counts


def format_sentences(sentences: Sequence[str], form: Form) -> str:
    if form == "bullets":
        return "\n".join(f"- {s}" for s in sentences)
    # Sentences ending in a full-width stop are followed by no space in CJK text.
    joined = ""
    for sentence in sentences:
        glue = "" if not joined or joined.endswith(_WIDE_TERMINATOR) else " "
        joined += glue + sentence
    return joined


def _clean(sentence: str) -> str:
    return " ".join(_LIST_MARKER.sub("", sentence).split())


def _unique(sentences: Iterable[str]) -> list[str]:
    """Sentences without repeats (chat is full of "+1" and "thanks!"), first one kept."""
    seen: set[str] = set()
    result: list[str] = []
    for sentence in sentences:
        key = sentence.casefold()
        if sentence and key not in seen:
            seen.add(key)
            result.append(sentence)
    return result


def _tfidf(rows: Sequence[Counter[str]]) -> Matrix:
    import numpy as np

    vocabulary = {term: i for i, term in enumerate(sorted(set().union(*rows)))}
    frequency = Counter(term for row in rows for term in row)
    matrix = np.zeros((len(rows), max(1, len(vocabulary))))
    for r, row in enumerate(rows):
        for term, count in row.items():
            # No "+1" on the IDF: a word in every sentence says nothing about centrality.
            idf = math.log((1 + len(rows)) / (1 + frequency[term]))
            matrix[r, vocabulary[term]] = (1 + math.log(count)) * idf
    return matrix


def _similarity(matrix: Matrix) -> Matrix:
    import numpy as np

    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    similarity: Matrix = unit @ unit.T
    np.fill_diagonal(similarity, 0.0)
    return similarity


def _pagerank(similarity: Matrix) -> Matrix:
    """PageRank where every row is scaled by the same constant, the largest row sum.

    Classic TextRank normalises each row to 1, so two off-topic sentences that only resemble
    each other pass all their weight back and forth and outrank the real topic. With one
    scale for all rows a weakly linked sentence hands on little, and the rest is spread evenly.
    """
    import numpy as np

    n = similarity.shape[0]
    largest = float(similarity.sum(axis=1).max())
    transition = similarity / largest if largest > 0 else similarity
    scores = np.full(n, 1.0 / n)
    for _ in range(_ITERATIONS):
        spread = _DAMPING * (transition.T @ scores)
        updated: Matrix = spread + (1.0 - spread.sum()) / n
        if np.abs(updated - scores).sum() < _TOLERANCE:
            return updated
        scores = updated
    return scores
