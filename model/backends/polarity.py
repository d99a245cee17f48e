"""Polarity probabilities from the model's own next-token distribution, shared by every backend.

A backend feeds each generated token to a `PolarityTracker`. At the token that completes `"polarity": "X"` it
also passes the alternatives the model had at that step (token text, log-probability; unnormalized logits do as
well, since only ratios count). The tracker sums the probability of the tokens that spell each polarity value
after the same lead-in text the emitted token had (`+`, `+"`, `+",` all say "+"), and renormalizes over the
four values: one {"+": p, "-": p, "0": p, "~": p} per mention, in output order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np

from model.schema import POLARITIES

# The value of a "polarity" key (not one inside a string, where its quotes would be escaped).
_POLARITY_VALUE = re.compile(r'(?<!\\)"polarity"\s*:\s*"([+\-0~])')
# Text after which the next token may hold the value: `"polarity`, `"polarity"`, `"polarity": `, `"polarity": "`.
_AWAITING_VALUE = re.compile(r'(?<!\\)"polarity"?[\s:"]*$')
_LOOKBACK = 40
# Alternatives kept from a full-vocabulary distribution: the polarity tokens are near the top whenever they matter.
TOP_ALTERNATIVES = 64

Alternatives = Iterable[tuple[str, float]]


class PolarityTracker:
    def __init__(self) -> None:
        self.text = ""
        self.distributions: list[dict[str, float]] = []

    def awaiting_value(self) -> bool:
        """True when the next token may carry a polarity value: backends capture alternatives only then."""
        return _AWAITING_VALUE.search(self.text[-_LOOKBACK:]) is not None

    def lead_in(self, piece: str) -> str | None:
        """If `piece` would complete a polarity value, the part of it before the value."""
        start = len(self.text)
        text = self.text[-_LOOKBACK:] + piece
        offset = start - len(self.text[-_LOOKBACK:])
        for match in _POLARITY_VALUE.finditer(text):
            if match.start(1) + offset >= start:
                return piece[: match.start(1) + offset - start]
        return None

    def advance(self, piece: str, alternatives: Alternatives | None = None) -> None:
        """Add one generated token's text; at a polarity value `alternatives` must include the token itself."""
        lead_in = self.lead_in(piece)
        self.text += piece
        if lead_in is None:
            return
        if alternatives is None:
            raise ValueError("no token probabilities were captured at a polarity value")
        self.distributions.append(polarity_distribution(lead_in, alternatives))


def spelled_value(lead_in: str, piece: str) -> str | None:
    """The polarity value a token spells after `lead_in` (value alone or followed by its closing quote)."""
    if not piece.startswith(lead_in):
        return None
    rest = piece[len(lead_in) :]
    if rest and rest[0] in POLARITIES and (len(rest) == 1 or rest[1] == '"'):
        return rest[0]
    return None


def polarity_distribution(lead_in: str, alternatives: Alternatives) -> dict[str, float]:
    scores: dict[str, list[float]] = {value: [] for value in POLARITIES}
    for piece, logprob in alternatives:
        value = spelled_value(lead_in, piece)
        if value is not None:
            scores[value].append(logprob)
    top = max((s for values in scores.values() for s in values), default=None)
    if top is None:
        raise ValueError(f"no alternative spells a polarity value after {lead_in!r}")
    mass = {value: sum(math.exp(s - top) for s in values) for value, values in scores.items()}
    total = sum(mass.values())
    return {value: m / total for value, m in mass.items()}


def top_ids(scores: np.ndarray, chosen: int, k: int = TOP_ALTERNATIVES) -> np.ndarray:
    """Ids of the `k` highest scores over the vocabulary, plus the chosen token, ascending."""
    return np.union1d(np.argpartition(scores, -k)[-k:], [chosen])
