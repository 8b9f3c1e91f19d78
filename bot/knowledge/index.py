"""The knowledge base's in-memory index: every chunk's place (document, order, section), its
word statistics (bot.knowledge.lexical), its embedding, and the vocabulary used to correct
typos.

It is rebuilt from the database when the chunks change (KnowledgeBase compares a cheap stamp
before each search), so every worker sharing one database sees the same documents. Semantic
search is exact: one matrix product over all vectors, about 1.5 ms per 10,000 chunks, and 1 KB
of memory a chunk with the 256-dimension model; word statistics take about as much again.
`knowledge.max_memory_chunks` bounds both: above it only the places are kept, and search is
the database's full-text engine alone.

Typo tolerance: a query word found in no chunk is replaced by the most frequent known word at
edit distance 1 (a letter missing, added, changed, or two swapped), found through a map from
each word with one letter deleted to the words that give it (the symmetric-delete method), so a
lookup costs a few dictionary probes instead of a scan of the vocabulary. The map holds the
most frequent words of 4 to 64 letters, numbers and hexadecimal ids (checksums, commit
hashes) left out, up to MAX_DELETIONS deletions in all: a list of checksums or identifiers
cost 270 times its own size in it (a helper's review).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from bot.knowledge.embeddings import Vectors
from bot.knowledge.expansion import RelatedWords
from bot.knowledge.lexical import LexicalIndex

# Shorter words have too many neighbours at distance 1 to guess which one was meant.
MIN_CORRECTED_LENGTH = 4
# A word's deletions are n strings of n characters: a longer word (a hex dump, a line of
# underscores, a 100,000-letter question) would cost n * n memory, so it is never corrected.
# Far above any word that is mistyped.
MAX_CORRECTED_LENGTH = 64
# Deletions in the map, the most frequent words first: room for every word of a few hundred
# pages of documentation (the evaluation sets have 2,200 and 2,850 distinct words, about
# 15,000-21,000 deletions; Parley's own docs 3,700 and 25,000), not a dump of identifiers.
# About 70 MB at most (measured with 64-letter words; 48 MB with 20-letter ones).
MAX_DELETIONS = 500_000
# A hexadecimal id this long (a checksum, a commit hash) is never a mistyped word.
MIN_HEX_ID_LENGTH = 7
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class ChunkPlace:
    id: int
    document_id: int
    ordinal: int
    location: str
    # The document's collection (migration 0009): a search looks in one collection only.
    collection: str = ""


@dataclass(slots=True)
class Vocabulary:
    """How many chunks hold each word, and the one-deletion map over those words."""

    frequency: Counter[str] = field(default_factory=Counter)
    # A deletion and the word that gives it; a tuple where several do (few: a set each, the
    # most of them holding one word, cost 3 times the memory).
    _deletions: dict[str, str | tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, frequency: Counter[str]) -> Vocabulary:
        """From how many chunks hold each (lower-cased) word."""
        vocabulary = cls(frequency)
        correctable = [w for w in frequency if _correctable(w, MIN_CORRECTED_LENGTH - 1)]
        correctable.sort(key=frequency.__getitem__, reverse=True)  # stable: ties keep order
        deletions = vocabulary._deletions
        for word in correctable:
            if len(deletions) + len(word) + 1 > MAX_DELETIONS:
                break
            for key in _deletions(word):
                held = deletions.get(key)
                if held is None:
                    deletions[key] = word
                else:
                    deletions[key] = (held, word) if isinstance(held, str) else (*held, word)
        return vocabulary

    def correct(self, word: str) -> str | None:
        """The known word meant by an unknown `word`, or None (known, too short, no match)."""
        if word in self.frequency or not _correctable(word, MIN_CORRECTED_LENGTH):
            return None
        found: set[str] = set()
        for key in _deletions(word):
            held = self._deletions.get(key, ())
            found.update((held,) if isinstance(held, str) else held)
        if not found:
            return None
        return max(sorted(found), key=self.frequency.__getitem__)


def _correctable(word: str, min_length: int) -> bool:
    """Of a length to correct, and not a number or a hexadecimal id (`h264`, `utf8` are)."""
    if not min_length <= len(word) <= MAX_CORRECTED_LENGTH or word.isdigit():
        return False
    hex_id = len(word) >= MIN_HEX_ID_LENGTH and _HEX.issuperset(word)
    return not (hex_id and any(c.isdigit() for c in word))


def _deletions(word: str) -> set[str]:
    return {word, *(word[:i] + word[i + 1 :] for i in range(len(word)))}


@dataclass(slots=True)
class ChunkIndex:
    """A snapshot of the chunks at `stamp`. The rows of `lexical` and `vectors` follow
    `places`; they are None over the size limit (and `vectors` when semantic search is off)."""

    stamp: tuple[object, ...]
    places: list[ChunkPlace]
    vocabulary: Vocabulary = field(default_factory=Vocabulary)
    lexical: LexicalIndex | None = None
    vectors: Vectors | None = None
    # Optional: one vector per distinct section title (`titles`), and each row's title number;
    # a chunk's similarity is then the better of its own and its section title's.
    titles: Vectors | None = None
    title_of_row: np.ndarray | None = None
    # Optional: vectors of parts of chunks (paragraphs), `part_starts[r]` the first part of
    # row r (rows in order, each with at least one part); a chunk counts with its best part.
    parts: Vectors | None = None
    part_starts: np.ndarray | None = None
    # Optional: the documents' words and their vectors, for query expansion.
    related: RelatedWords | None = None
    _row_of: dict[int, int] = field(default_factory=dict)
    _by_ordinal: dict[tuple[int, int], ChunkPlace] = field(default_factory=dict)
    _within: dict[str, np.ndarray | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._row_of = {place.id: row for row, place in enumerate(self.places)}
        self._by_ordinal = {(p.document_id, p.ordinal): p for p in self.places}

    def within(self, collection: str) -> np.ndarray | None:
        """The rows of `collection` as a boolean mask; None when every row is in it (the
        usual single-collection knowledge base: nothing to filter)."""
        if collection not in self._within:
            mask = np.fromiter((p.collection == collection for p in self.places), dtype=bool)
            self._within[collection] = None if mask.all() else mask
        return self._within[collection]

    def place(self, chunk_id: int) -> ChunkPlace | None:
        row = self._row_of.get(chunk_id)
        return None if row is None else self.places[row]

    def neighbour(self, place: ChunkPlace, step: int) -> ChunkPlace | None:
        """The chunk `step` places after (or before) this one in the same section."""
        found = self._by_ordinal.get((place.document_id, place.ordinal + step))
        return found if found is not None and found.location == place.location else None

    def best_words(
        self,
        terms: list[str],
        k: int,
        collection: str = "",
        weights: list[float] | None = None,
    ) -> list[int]:
        """Up to k chunk ids of `collection` by BM25 (bot.knowledge.lexical), best first."""
        if self.lexical is None:
            return []
        found = self.lexical.search(terms, k, self.within(collection), weights)
        return [self.places[row].id for row, _ in found]

    def holding(self, chunk_ids: list[int], terms: list[str]) -> set[int]:
        """Those of `chunk_ids` whose text or heading holds one of `terms` (by stem)."""
        if self.lexical is None:
            return set(chunk_ids)
        mask = self.lexical.holding(terms)
        return {c for c in chunk_ids if c in self._row_of and mask[self._row_of[c]]}

    def centroid(self, chunk_ids: list[int]) -> Vectors | None:
        """The mean vector of these chunks (those still indexed), or None."""
        if self.vectors is None:
            return None
        rows = [self._row_of[c] for c in chunk_ids if c in self._row_of]
        return self.vectors[rows].mean(axis=0) if rows else None

    def nearest(self, query: Vectors, k: int, collection: str = "") -> list[tuple[int, float]]:
        """Up to k (chunk id, cosine similarity) of `collection`, best first."""
        if self.vectors is None or not len(self.places):
            return []
        within = self.within(collection)
        if within is not None and not within.any():
            return []
        # einsum, not `@`: a matrix-vector product in numpy goes to the BLAS thread pool,
        # whose threads spin against the event loop and other workers on a busy machine
        # (22 ms instead of 1.5 ms for 10,000 x 256 with two cores under load).
        similarity = np.einsum("ij,j->i", self.vectors, query)
        if self.titles is not None and self.title_of_row is not None:
            by_title = np.einsum("ij,j->i", self.titles, query)[self.title_of_row]
            similarity = np.maximum(similarity, by_title)
        if self.parts is not None and self.part_starts is not None:
            by_part = np.maximum.reduceat(np.einsum("ij,j->i", self.parts, query), self.part_starts)
            similarity = np.maximum(similarity, by_part)
        if within is not None:
            similarity[~within] = -np.inf
            k = min(k, int(within.sum()))
        k = min(k, len(similarity))
        top = np.argpartition(-similarity, k - 1)[:k]
        top = top[np.argsort(-similarity[top], kind="stable")]
        return [(self.places[row].id, float(similarity[row])) for row in top]
