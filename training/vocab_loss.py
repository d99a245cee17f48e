"""Cross-entropy through the output projection in chunks, never holding a (positions x vocabulary) matrix.

Gemma's vocabulary has 262,144 entries: the logits of 1,000 loss positions are 1 GB in float32, and autograd
would keep them (and their softmax) until the backward pass. The output projection is frozen (LoRA does not
touch it), so the only gradient needed is the one of the hidden states, and it can be computed right away:
chunk by chunk, the logits, the loss and d loss / d hidden = (softmax - one_hot) @ W are formed and the
logits dropped. The backward pass only scales the stored (positions x hidden) gradient.
"""

from __future__ import annotations

import torch

CHUNK = 128  # positions per chunk: 128 x 262,144 float32 logits are 128 MiB


class _ProjectedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        softcap: float | None,
        target_weights: torch.Tensor,
    ):
        total = hidden.new_zeros((), dtype=torch.float32)
        shares = target_weights.float() / target_weights.sum()
        want_grad = ctx.needs_input_grad[0]  # False under torch.no_grad(): evaluation needs only the loss
        grad_hidden = torch.zeros_like(hidden)
        for start in range(0, hidden.shape[0], CHUNK):
            rows = slice(start, start + CHUNK)
            logits = hidden[rows] @ weight.T
            if softcap:
                capped = torch.tanh(logits / softcap)
                logits = capped * softcap
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            picked = targets[rows]
            total += -(log_probs.gather(1, picked[:, None])[:, 0] * shares[rows]).sum()
            if not want_grad:
                continue
            grad_logits = log_probs.exp_()
            grad_logits[torch.arange(len(picked)), picked] -= 1
            if softcap:
                grad_logits *= 1 - capped.float() ** 2
            grad_logits *= shares[rows, None]
            grad_hidden[rows] = grad_logits.to(weight.dtype) @ weight
        ctx.save_for_backward(grad_hidden)
        return total

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss, None, None, None, None


def projected_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    softcap: float | None = None,
    target_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of `targets` under logits `hidden @ weight.T` (soft-capped as Gemma 2 does when
    `softcap` is set), weighted by `target_weights` when given; differentiable in `hidden` only."""
    if weight.requires_grad and torch.is_grad_enabled():
        raise ValueError("projected_cross_entropy computes no gradient for the output projection; freeze it")
    if target_weights is None:
        target_weights = torch.ones(len(targets), device=targets.device)
    return _ProjectedCrossEntropy.apply(hidden, weight, targets, softcap, target_weights)
