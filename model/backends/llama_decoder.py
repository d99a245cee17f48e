"""The decoding policy of the llama_cpp backend, run as llama-cpp-python's logits processor at every step.

It sees the model's own scores over the whole vocabulary before anything masks them, and forces the token it
picks: greedy, within the output grammar, and at a polarity value the most probable *value* (summed over the
tokens that spell it) rather than the most probable single token. It records polarity probabilities on the way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from model.backends.grammar import GrammarGate
from model.backends.polarity import PolarityTracker, polarity_distribution, spelled_value, top_ids

Candidate = tuple[int, str, float]  # token id, its text, its logit


class StepDecoder:
    def __init__(self, piece: Callable[[int], str], gate: GrammarGate | None, stop_token: int) -> None:
        self.tracker = PolarityTracker()
        self.failure: Exception | None = None
        self._piece = piece
        self._gate = gate
        self._stop_token = stop_token

    def __call__(self, _input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        # This runs inside a C callback, where an exception would be dropped and decoding would go on unguided:
        # keep it for the caller and end the generation instead.
        try:
            token = self._decide(logits)
        except Exception as exc:
            self.failure = exc
            token = self._stop_token
        forced = np.full_like(logits, -np.inf)
        forced[token] = 0.0
        return forced

    def _decide(self, logits: np.ndarray) -> int:
        token = self._gate.choose(logits) if self._gate else int(np.argmax(logits))
        candidates = None
        if self.tracker.awaiting_value():
            candidates = self._candidates(logits, token)
            lead_in = self.tracker.lead_in(self._piece(token))
            if lead_in is not None:
                token = _most_probable_value_token(lead_in, candidates)
        pairs = None if candidates is None else [(piece, score) for _, piece, score in candidates]
        self.tracker.advance(self._piece(token), pairs)
        if self._gate:
            self._gate.accept(token)
        return token

    def _candidates(self, logits: np.ndarray, chosen: int) -> list[Candidate]:
        """The top tokens at this step (and the chosen one) that the grammar allows."""
        ids = top_ids(logits, chosen)
        if self._gate:
            ids = ids[self._gate.allowed(ids, logits)]
        return [(int(i), self._piece(int(i)), float(logits[i])) for i in ids]


def _most_probable_value_token(lead_in: str, candidates: list[Candidate]) -> int:
    """The best-scoring token spelling the polarity value with the highest summed probability, so the emitted
    polarity is always the one with the highest reported probability."""
    distribution = polarity_distribution(lead_in, [(piece, score) for _, piece, score in candidates])
    best = max(distribution, key=distribution.__getitem__)
    return max((score, token) for token, piece, score in candidates if spelled_value(lead_in, piece) == best)[1]
