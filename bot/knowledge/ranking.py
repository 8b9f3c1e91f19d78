"""Reciprocal rank fusion of the full-text and semantic rankings, and the grouping of chunks
into one passage per section.

Fusion works on ranks, not scores: bm25, ts_rank and cosine similarity live on scales that
cannot be added, while a rank means the same in each list. A chunk scores
sum(weight * (K + 1) / (K + rank)) over the lists that hold it, divided by the sum of the
weights, so 1.0 means first in every list; K = 60 is the constant of Cormack, Clarke and
Büttcher (SIGIR 2009), which keeps one list's first place from outweighing agreement between
lists.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bot.knowledge.embeddings import Vectors
from bot.knowledge.index import ChunkIndex, ChunkPlace

RRF_K = 60
# Chunks of one section merged into its passage: the best one and its neighbours that also
# matched, so a passage stays short enough to quote (3 x 350 tokens at most).
MAX_MERGED = 3


@dataclass(frozen=True, slots=True)
class SectionHit:
    """The chunks (in document order) that make one passage, and its fused score."""

    chunk_ids: list[int]
    score: float


def fuse(rankings: Sequence[Sequence[int]], weights: Sequence[float]) -> list[tuple[int, float]]:
    """(chunk id, fused score) best first; ties keep the order of first appearance."""
    scores: defaultdict[int, float] = defaultdict(float)
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, chunk_id in enumerate(ranking, 1):
            scores[chunk_id] += weight * (RRF_K + 1) / (RRF_K + rank)
    total = sum(w for ranking, w in zip(rankings, weights, strict=True) if ranking) or 1.0
    return sorted(((c, s / total) for c, s in scores.items()), key=lambda item: -item[1])


def best_sections(fused: list[tuple[int, float]], index: ChunkIndex, k: int) -> list[SectionHit]:
    """The k best sections, each once, with its matching neighbours merged."""
    matched = {chunk_id for chunk_id, _ in fused}
    seen: set[tuple[int, str]] = set()
    hits: list[SectionHit] = []
    for chunk_id, score in fused:
        place = index.place(chunk_id)
        if place is None:  # removed since the index was built
            continue
        key = (place.document_id, place.location)
        if key in seen:
            continue
        seen.add(key)
        hits.append(SectionHit(_merged(place, index, matched), score))
        if len(hits) == k:
            break
    return hits


def _merged(best: ChunkPlace, index: ChunkIndex, matched: set[int]) -> list[int]:
    run = [best]
    for step in (-1, 1):
        place: ChunkPlace | None = best
        while len(run) < MAX_MERGED:
            place = index.neighbour(place, step) if place is not None else None
            if place is None or place.id not in matched:
                break
            run.append(place)
    return [p.id for p in sorted(run, key=lambda p: p.ordinal)]


def moved_query(query: Vectors, centroid: Vectors | None, weight: float) -> Vectors:
    """Rocchio feedback: the question's vector moved towards the mean vector of the first
    ranking's best chunks, unit length again. A question phrased in other words than the
    documents takes on the documents' vocabulary through its best matches."""
    if centroid is None:
        return query
    moved = query + weight * centroid
    return np.asarray(moved / max(float(np.linalg.norm(moved)), 1e-9), dtype=np.float32)
