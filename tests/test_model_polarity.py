"""Polarity probabilities from per-step token alternatives, as the backends feed them."""

import math

import numpy as np
import pytest

from model.backends.polarity import PolarityTracker, polarity_distribution, spelled_value, top_ids


def feed(tracker: PolarityTracker, pieces: list[str], alternatives: dict[int, list[tuple[str, float]]]) -> None:
    for index, piece in enumerate(pieces):
        tracker.advance(piece, alternatives.get(index))


def softmax_share(chosen: list[float], others: list[float]) -> float:
    return sum(map(math.exp, chosen)) / sum(map(math.exp, chosen + others))


def test_value_after_the_quote_sums_every_spelling_of_each_value():
    tracker = PolarityTracker()
    pieces = ['[{"', "entity", '":', ' "', "Apple", '",', ' "', "polar", "ity", '":', ' "', "+", '",', ' "']
    at_value = pieces.index("+")
    alternatives = [("+", -0.2), ('+"', -2.0), ('+",', -3.0), ("-", -1.0), ('0"', -2.5), ("~", -4.0), ("Apple", -0.1)]
    feed(tracker, pieces, {at_value: alternatives})
    [probs] = tracker.distributions
    assert probs["+"] == pytest.approx(softmax_share([-0.2, -2.0, -3.0], [-1.0, -2.5, -4.0]))
    assert probs["-"] == pytest.approx(softmax_share([-1.0], [-0.2, -2.0, -3.0, -2.5, -4.0]))
    assert sum(probs.values()) == pytest.approx(1.0)


def test_token_that_merges_the_quote_and_the_value_compares_like_tokens_only():
    tracker = PolarityTracker()
    alternatives = [(' "-', -0.2), (' "+', -1.0), ('"+', -0.1), (" ", -2.0)]  # '"+' lacks the space: other lead-in
    feed(tracker, ['{"entity": "Boeing", "polarity":', ' "-', '", "category": "Legal"}'], {1: alternatives})
    expected = {"+": softmax_share([-1.0], [-0.2]), "-": softmax_share([-0.2], [-1.0]), "0": 0.0, "~": 0.0}
    assert tracker.distributions == [pytest.approx(expected)]


def test_polarity_text_inside_an_entity_name_is_not_a_value():
    tracker = PolarityTracker()
    feed(tracker, ['[{"entity": "The \\"polarity\\": \\"', "+", '\\" fund", '], {})
    assert tracker.distributions == []


def test_each_mention_gets_its_own_distribution_in_order():
    tracker = PolarityTracker()
    pieces = ['{"polarity": "', "+", '"}, {"polarity": "', "0", '"}']
    feed(tracker, pieces, {1: [("+", 0.0), ("-", 0.0)], 3: [("0", 0.0), ("~", math.log(3))]})
    assert [round(d["+"], 3) for d in tracker.distributions] == [0.5, 0.0]
    assert [round(d["~"], 3) for d in tracker.distributions] == [0.0, 0.75]


def test_backends_are_told_when_to_capture_alternatives():
    tracker = PolarityTracker()
    assert not tracker.awaiting_value()
    for piece in ['{"entity": "A", "', "polar", "ity", '"', ":", " ", '"']:
        tracker.advance(piece)
    assert tracker.awaiting_value()
    tracker.advance("-", [("-", 0.0)])
    assert not tracker.awaiting_value()


def test_value_without_captured_alternatives_is_an_error():
    tracker = PolarityTracker()
    with pytest.raises(ValueError, match="no token probabilities were captured"):
        feed(tracker, ['{"polarity": "', "+"], {})


def test_spellings_must_end_at_the_value_or_its_quote():
    assert spelled_value("", '+"') == "+"
    assert spelled_value(' "', ' "~') == "~"
    assert spelled_value("", "-1") is None
    assert spelled_value("", "00") is None
    with pytest.raises(ValueError, match="no alternative spells a polarity value"):
        polarity_distribution("", [("Apple", 0.0)])


def test_top_ids_always_hold_the_chosen_token():
    scores = np.arange(1000, dtype=np.float32)
    ids = top_ids(scores, chosen=3, k=5)
    assert ids.tolist() == [3, 995, 996, 997, 998, 999]
