"""Training examples as tokens, and batches of them packed into one padding-free row.

A batch is one row: the token prefix its examples share (the prompt's instruction, identical in every
prompt) once, then each example's own tokens at the positions it would have alone.
Attention (training/attention.py) lets each example see only the prefix and itself, so the loss equals the
examples' separate losses while the shared prefix is computed once per step instead of once per example.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

LABEL_KEYS = ("polarity", "category")  # the output fields that carry the model's judgement


class TrainingDataError(ValueError):
    """A training example that can't be used; the message names the example and what is wrong."""


@dataclass(frozen=True)
class TrainingExample:
    """One prompt and the completion the model should learn to write after it.

    `exclude_spans` are [start, end) character ranges of `completion` kept out of the loss, e.g. the
    category of a mention whose source data has no category: the model reads those tokens but is
    neither rewarded nor penalized for predicting them."""

    prompt: str
    completion: str
    exclude_spans: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class EncodedExample:
    tokens: tuple[int, ...]  # BOS + prompt + completion + EOS
    prompt_len: int  # BOS and prompt tokens; the completion starts here
    loss_weights: tuple[float, ...]  # per completion token (EOS included): its weight in the loss, 0 = not counted


@dataclass(frozen=True)
class Pack:
    input_ids: torch.Tensor  # (1, L)
    position_ids: torch.Tensor  # (1, L): each example's own positions, as if it were alone
    shared: int  # the row starts with this many tokens that every example shares
    segments: tuple[tuple[int, int], ...]  # [start, end) of each example's own tokens in the row
    predict_at: torch.Tensor  # (N,) row positions whose hidden state predicts a loss token
    targets: torch.Tensor  # (N,) the tokens predicted there
    weights: torch.Tensor  # (N,) each target's weight in the loss
    example_tokens: int  # tokens of the examples counted separately (what an unpacked batch would process)


def as_example(item: TrainingExample | Sequence) -> TrainingExample:
    """A TrainingExample from itself or a (prompt, completion[, exclude_spans]) tuple."""
    if isinstance(item, TrainingExample):
        return item
    prompt, completion, *rest = item
    spans = tuple((int(start), int(end)) for start, end in rest[0]) if rest else ()
    return TrainingExample(prompt, completion, spans)


def value_spans(completion: str, keys: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """[start, end) of every string value of these keys in a serialized mention list, in order."""
    pattern = re.compile(rf'"(?:{"|".join(map(re.escape, keys))})": "([^"]*)"')
    return tuple(match.span(1) for match in pattern.finditer(completion))


def encode(
    examples: Sequence[TrainingExample], tokenizer: PreTrainedTokenizerBase, max_tokens: int, label_weight: float = 1.0
) -> list[EncodedExample]:
    """Tokenize like llama.cpp at inference: BOS, the prompt, then the completion tokenized on its own, then EOS.

    Tokens of a label value (LABEL_KEYS) weigh `label_weight` in the loss, other completion tokens 1 (they are
    mostly JSON syntax and names copied from the article). Excluded spans weigh 0. docs/benchmarks.md has what a
    weight above 1 did to the default adapter."""
    encoded = []
    for index, example in enumerate(examples):
        try:
            encoded.append(_encode_one(example, tokenizer, max_tokens, label_weight))
        except TrainingDataError as exc:
            raise TrainingDataError(f"training example {index}: {exc}") from None
    return encoded


def _encode_one(
    example: TrainingExample, tokenizer: PreTrainedTokenizerBase, max_tokens: int, label_weight: float
) -> EncodedExample:
    if not example.prompt:
        raise TrainingDataError("the prompt is empty")
    if not example.completion:
        raise TrainingDataError("the completion is empty")
    for start, end in example.exclude_spans:
        if not 0 <= start < end <= len(example.completion):
            raise TrainingDataError(
                f"exclude span ({start}, {end}) is not a non-empty range inside the completion "
                f"({len(example.completion)} characters)"
            )
    prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    completion = tokenizer(example.completion, add_special_tokens=False, return_offsets_mapping=True)
    labels = value_spans(example.completion, LABEL_KEYS)

    def weight(start: int, end: int) -> float:
        if _overlaps_any(start, end, example.exclude_spans):
            return 0.0
        return label_weight if _overlaps_any(start, end, labels) else 1.0

    tokens = (tokenizer.bos_token_id, *prompt, *completion["input_ids"], tokenizer.eos_token_id)
    if len(tokens) > max_tokens:
        raise TrainingDataError(f"{len(tokens)} tokens, more than max_tokens ({max_tokens})")
    return EncodedExample(tokens, 1 + len(prompt), (*(weight(*span) for span in completion["offset_mapping"]), 1.0))


def _overlaps_any(start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(start < span_end and span_start < end for span_start, span_end in spans)


def plan_batches(examples: Sequence[EncodedExample], budget: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices of each step of one epoch: a seeded shuffle cut into packs of at most `budget` row
    tokens (a longer example is a pack of its own)."""
    order = list(range(len(examples)))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    batches: list[list[int]] = []
    current: list[int] = []
    shared = tokens = 0
    for index in order:
        example = examples[index]
        if current:
            shared_with = min(shared, _common_prefix(examples[current[0]], example))
            if tokens + len(example.tokens) - len(current) * shared_with <= budget:
                current.append(index)
                shared, tokens = shared_with, tokens + len(example.tokens)
                continue
            batches.append(current)
        current, shared, tokens = [index], example.prompt_len, len(example.tokens)
    if current:
        batches.append(current)
    return batches


def shared_prefix_length(examples: Sequence[EncodedExample]) -> int:
    """Tokens all examples start with, within their prompts (a completion token is never shared)."""
    return min(_common_prefix(examples[0], example) for example in examples)


def _common_prefix(a: EncodedExample, b: EncodedExample) -> int:
    limit = min(a.prompt_len, b.prompt_len)
    same = 0
    while same < limit and a.tokens[same] == b.tokens[same]:
        same += 1
    return same


def build_pack(examples: Sequence[EncodedExample]) -> Pack:
    shared = shared_prefix_length(examples)
    ids: list[int] = list(examples[0].tokens[:shared])
    positions: list[int] = list(range(shared))
    segments: list[tuple[int, int]] = []
    predict_at: list[int] = []
    targets: list[int] = []
    weights: list[float] = []
    for example in examples:
        start = len(ids)
        ids.extend(example.tokens[shared:])
        positions.extend(range(shared, len(example.tokens)))
        segments.append((start, len(ids)))

        def row_position(token_index: int) -> int:
            return token_index if token_index < shared else start + token_index - shared

        for offset, loss_weight in enumerate(example.loss_weights):
            if loss_weight:
                target_index = example.prompt_len + offset
                predict_at.append(row_position(target_index - 1))
                targets.append(example.tokens[target_index])
                weights.append(loss_weight)
    return Pack(
        input_ids=torch.tensor([ids]),
        position_ids=torch.tensor([positions]),
        shared=shared,
        segments=tuple(segments),
        predict_at=torch.tensor(predict_at),
        targets=torch.tensor(targets),
        weights=torch.tensor(weights),
        example_tokens=sum(len(example.tokens) for example in examples),
    )
