"""Query expansion from the embedding model's view of the documents' own words.

A question phrased in other words than the documents ("shrink what the server sends back"
against a section on compression) shares no word with its answer, and a static embedding of a
whole passage is too blurred to rescue it. Single words embed well with a static model, so
each question word's nearest words *of the documents* ("shrink" -> "compression", "smaller";
"passwords" -> "password", "credentials", "secrets") join the full-text query at a lower
weight (SearchOptions.expansion_*), and BM25 does the rest.

The vocabulary is every word of three characters or more found in at least two chunks: a
word seen once is as often a typo or a name used in one example as a term of the documents.
It is embedded when the in-memory index is built (about 2,000 words a second), and a question
costs one product of its words' vectors with the vocabulary's, bounded by MAX_VOCABULARY.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from bot.knowledge.embeddings import Vectors

# About 1 ms of search time per 1,000 words for a question of 15 words on a busy two-core
# machine; 10,000 chunks of documentation hold a few thousand words seen twice or more.
MAX_VOCABULARY = 10_000
MIN_LENGTH = 3


def vocabulary(frequency: Counter[str]) -> list[str]:
    """The words a question may be expanded with, the most frequent first, from how many
    chunks hold each word."""
    common = (w for w, n in frequency.most_common() if n >= 2 and len(w) >= MIN_LENGTH)
    return [w for w in common if not w.isdigit()][:MAX_VOCABULARY]


@dataclass(frozen=True, slots=True)
class RelatedWords:
    """The documents' words and their unit vectors (rows follow `words`)."""

    words: list[str]
    vectors: Vectors

    def nearest(self, queries: Vectors, n: int, floor: float) -> list[tuple[str, float]]:
        """For each row of `queries` (a question word's vector), its n nearest words at a
        cosine similarity of at least `floor`: (word, similarity), each word once with its
        best similarity."""
        if not self.words or not len(queries) or n < 1:
            return []
        # einsum, not `@`: numpy's BLAS thread pool spins against the event loop on a busy
        # machine (bot.knowledge.index.ChunkIndex.nearest).
        similarity = np.einsum("ij,kj->ki", self.vectors, queries)
        n = min(n, len(self.words))
        found: dict[str, float] = {}
        for row in similarity:
            for column in np.argpartition(-row, n - 1)[:n]:
                if row[column] >= floor:
                    word = self.words[column]
                    found[word] = max(float(row[column]), found.get(word, -1.0))
        return list(found.items())
