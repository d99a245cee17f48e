"""Attention over a packed row (training/packing.py) without attending across examples.

A dense (L x L) mask over the whole row would spend most of its work on pairs that are masked out: a row of
a dozen examples is 1,000 tokens long, and each example sees only its own ~70 and the shared prefix. This
attention computes the prefix causally once, then each example's queries against the prefix keys and its
own keys only.

It is registered with transformers as the attention implementation "sentimon_packed"; a forward pass
that passes no `packed_row` (generation, evaluation) runs transformers' ordinary sdpa attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from training.packing import Pack

PACKED_ATTENTION = "sentimon_packed"


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    packed_row: Pack | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query (1, heads, L, dim), key/value (1, kv_heads, L, dim) -> (1, L, heads, dim)."""
    if packed_row is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            sliding_window=sliding_window, **kwargs,
        )  # fmt: skip
    shared = packed_row.shared
    positions = packed_row.position_ids[0]
    pieces = [_attend(query, key, value, slice(0, shared), slice(0, 0), positions, sliding_window, dropout, scaling)]
    for start, end in packed_row.segments:
        own = slice(start, end)
        pieces.append(_attend(query, key, value, own, slice(0, shared), positions, sliding_window, dropout, scaling))
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def _attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    own: slice,
    prefix: slice,
    positions: torch.Tensor,
    window: int | None,
    dropout: float,
    scaling: float | None,
) -> torch.Tensor:
    """Queries of the `own` span against keys of `prefix` followed by `own`, causally by position.

    Plain matmul-softmax-matmul: for these small blocks it is faster than torch's CPU flash attention, whose
    backward pass is slow at this size, and it handles grouped-query heads by regrouping the queries."""
    keys = torch.cat([key[:, :, prefix], key[:, :, own]], dim=2)
    values = torch.cat([value[:, :, prefix], value[:, :, own]], dim=2)
    query_pos = positions[own][:, None]
    key_pos = torch.cat([positions[prefix], positions[own]])[None, :]
    allowed = key_pos <= query_pos
    if window:
        allowed &= query_pos - key_pos < window
    batch, heads, length, dim = query[:, :, own].shape
    groups = heads // keys.shape[1]  # query heads per key/value head, in order
    grouped = query[:, :, own].reshape(batch, keys.shape[1], groups * length, dim)
    scores = (grouped @ keys.transpose(-1, -2)) * (dim**-0.5 if scaling is None else scaling)
    scores = scores.masked_fill(~allowed.repeat(groups, 1), float("-inf"))
    weights = F.dropout(scores.softmax(dim=-1), p=dropout, training=dropout > 0)
    return (weights @ values).reshape(batch, heads, length, dim)


def use_packed_attention(model: PreTrainedModel) -> None:
    model.set_attn_implementation(PACKED_ATTENTION)


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
