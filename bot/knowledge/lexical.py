"""BM25 over the chunks in memory: the full-text half of search while the knowledge base fits
in memory (`knowledge.max_memory_chunks`).

Why not the database's own engine at this size: on a busy two-core machine FTS5's bm25 took
70 ms and PostgreSQL 400 ms for a question over 10,000 chunks (an OR of the question's words
matches most chunks, and PostgreSQL needs one count per word to weigh rare words), against
about 1 ms here; and both databases now rank the same way. Beyond the limit, search falls back
to the database's engine (bot.knowledge.search).

Scoring is BM25 (k1 = 1.2, b = 0.75, the defaults of FTS5 and Lucene) with BM25F's field
weights: a word in the heading path counts twice a word in the text. Words are lower-cased and
reduced to their English Snowball stem (PyStemmer), as PostgreSQL's 'english' configuration
does, so "migrations" finds "migrate". No word is dropped from the chunks; the question's own
stop words are dropped by bot.knowledge.search.query_terms.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import Stemmer

_WORD = re.compile(r"\w+")
K1 = 1.2
B = 0.75
HEADING_WEIGHT = 2
# Words stemmed per call while the index is built: PyStemmer keeps the GIL for a whole call,
# so the 600,000 distinct words of a list of checksums, stemmed at once in the worker thread,
# stopped the event loop (every conversation, not only the question waiting) for 1.7 s.
STEM_BATCH = 5_000


@dataclass(frozen=True, slots=True)
class _Postings:
    rows: npt.NDArray[np.int32]
    tf: npt.NDArray[np.float32]


class LexicalIndex:
    """Word statistics of a list of (heading path, text) documents, searched by row.

    Postings are kept per word as written (lower-cased) and joined by stem at query time:
    building stays one counting pass over the text, and a question's stem gathers every form
    of the word ("migrate", "migrations", "migrating")."""

    def __init__(self, documents: Sequence[tuple[str, str]]) -> None:
        self._stemmer = Stemmer.Stemmer("english")
        rows: defaultdict[str, list[int]] = defaultdict(list)
        tfs: defaultdict[str, list[int]] = defaultdict(list)
        lengths = np.zeros(len(documents), dtype=np.float32)
        for row, (heading, text) in enumerate(documents):
            words = Counter(_WORD.findall(text.lower()))
            for word, n in Counter(_WORD.findall(heading.lower())).items():
                words[word] += HEADING_WEIGHT * n
            lengths[row] = sum(words.values())
            for word, n in words.items():
                rows[word].append(row)
                tfs[word].append(n)
        self._size = len(documents)
        average = float(lengths.mean()) if self._size else 1.0
        self._norm = K1 * (1 - B + B * lengths / max(average, 1.0))
        self._postings = {
            word: _Postings(np.array(r, dtype=np.int32), np.array(tfs[word], dtype=np.float32))
            for word, r in rows.items()
        }
        self._forms: defaultdict[str, list[str]] = defaultdict(list)
        known = list(self._postings)
        stems = (
            stem
            for start in range(0, len(known), STEM_BATCH)
            for stem in self._stemmer.stemWords(known[start : start + STEM_BATCH])
        )
        for word, stem in zip(known, stems, strict=True):
            self._forms[stem].append(word)

    @property
    def word_frequency(self) -> Counter[str]:
        """How many documents hold each word (lower-cased): the typo corrector's vocabulary."""
        return Counter({word: len(p.rows) for word, p in self._postings.items()})

    def holding(self, terms: Sequence[str]) -> np.ndarray:
        """The rows that hold at least one of `terms` (by stem), as a boolean mask."""
        mask = np.zeros(self._size, dtype=bool)
        for stem in set(self._stemmer.stemWords(list(terms))):
            for word in self._forms.get(stem, ()):
                mask[self._postings[word].rows] = True
        return mask

    def search(
        self,
        terms: Sequence[str],
        k: int,
        within: np.ndarray | None = None,
        weights: Sequence[float] | None = None,
    ) -> list[tuple[int, float]]:
        """Up to k (row, score) with a score above 0, best first; only rows where the boolean
        mask `within` is true, when given (a knowledge-base collection). `weights` (one per
        term, 1.0 when not given) scale each term's share of the score; terms with one stem
        count once, with the largest of their weights."""
        by_stem: dict[str, float] = {}
        stems = self._stemmer.stemWords(list(terms))
        for stem, weight in zip(stems, weights or [1.0] * len(stems), strict=True):
            by_stem[stem] = max(weight, by_stem.get(stem, 0.0))
        scores = np.zeros(self._size, dtype=np.float32)
        for stem, weight in by_stem.items():
            forms = [self._postings[word] for word in self._forms.get(stem, ())]
            if not forms:
                continue
            tf = np.bincount(
                np.concatenate([p.rows for p in forms]),
                weights=np.concatenate([p.tf for p in forms]),
                minlength=self._size,
            ).astype(np.float32)
            rows = np.flatnonzero(tf)
            idf = np.log(1 + (self._size - len(rows) + 0.5) / (len(rows) + 0.5))
            tf = tf[rows]
            scores[rows] += weight * idf * tf * (K1 + 1) / (tf + self._norm[rows])
        if within is not None:
            scores[~within] = 0
        matched = np.flatnonzero(scores)
        if not len(matched):
            return []
        k = min(k, len(matched))
        top = matched[np.argpartition(-scores[matched], k - 1)[:k]]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(row), float(scores[row])) for row in top]
