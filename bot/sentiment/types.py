"""Sentiment of one customer message, and the per-turn signals the routing call leaves.

`Sentiment` is stored with the message (messages.sentiment_*; see bot/handoff) and read by the
escalation rule. `TurnSignals` is one per turn: the manager creates it, the intent router may
fill it from its structured-output call (no extra request), and the manager falls back to the
offline classifier for whatever is left empty.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Label(enum.StrEnum):
    NEGATIVE = "negative"
    NEUTRAL = "neutral"
    POSITIVE = "positive"


@dataclass(frozen=True, slots=True)
class Sentiment:
    label: Label
    # How sure, 0..1 (a lexicon's normalised strength, a model's stated confidence).
    score: float
    # Anger or frustration: escalates on its own under the default rule.
    angry: bool = False
    # "model" or "offline": where the label came from (recorded, shown in the handoff note).
    source: str = "offline"


@dataclass(slots=True)
class TurnSignals:
    """What one turn learned about its messages before answering them."""

    sentiment: Sentiment | None = None
    # The customer asked for a person (the routing's "human" intent matched).
    wants_human: bool = False
