"""The weight average of LoRA adapters trained from one base model (a "model soup"), as one llama.cpp adapter.

Adapter i adds alpha_i / r_i · B_i·A_i to a weight. Stacking the A matrices (rank R = r_1 + … + r_k) and placing
the B matrices side by side, each B_i scaled by c_i = (alpha_i / r_i) / k · R / alpha, gives an adapter of rank R
whose update alpha / R · Σ c_i·B_i·A_i is exactly the mean of theirs: no approximation, no training.

The file grows with R. With `rank`, each mean update is replaced by its best rank-`rank` approximation (truncated
SVD, computed from the factors without forming the full matrix), and the share of its energy (squared Frobenius
norm) kept is reported."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.adapter_file import AdapterTensors, read_adapter_gguf, write_adapter_gguf


class MergeError(ValueError):
    """The adapters can't be averaged; the message names the file at fault."""


@dataclass(frozen=True)
class Merged:
    path: Path
    rank: int  # of the largest update written
    energy_kept: float  # the smallest share, over the adapted weights, of a mean update's energy kept (1.0: exact)


def merge_adapters(paths: Sequence[Path], out_path: Path, *, rank: int | None = None) -> Merged:
    """Write the mean of the adapters at `paths` to `out_path`, at most `rank` wide if given."""
    if len(paths) < 2:
        raise MergeError("averaging needs at least two adapters")
    adapters = [read_adapter_gguf(path) for path in paths]
    first = adapters[0]
    for path, adapter in zip(paths[1:], adapters[1:], strict=True):
        _check_compatible(paths[0], first, path, adapter)
    alpha = first.alpha
    merged: dict[str, np.ndarray] = {}
    kept = [1.0]
    for name in first.tensors:
        if not name.endswith(".lora_a"):
            continue
        b_name = name.removesuffix("_a") + "_b"
        ranks = [adapter.tensors[name].shape[0] for adapter in adapters]
        total = sum(ranks)
        scales = [(adapter.alpha / rank) / len(adapters) * total / alpha for adapter, rank in zip(adapters, ranks)]
        a = np.concatenate([adapter.tensors[name] for adapter in adapters], axis=0)
        b = np.concatenate([adapter.tensors[b_name] * scale for adapter, scale in zip(adapters, scales)], axis=1)
        if rank is not None and rank < total:
            a, b, energy = _truncate(a, b, alpha / total, rank, alpha)
            kept.append(energy)
        merged[name], merged[b_name] = a.astype(np.float32), b.astype(np.float32)
    width = max(tensor.shape[0] for name, tensor in merged.items() if name.endswith(".lora_a"))
    return Merged(write_adapter_gguf(Path(out_path), first.arch, alpha, merged), width, min(kept))


def _truncate(
    a: np.ndarray, b: np.ndarray, scale: float, rank: int, alpha: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """A, B of the best rank-`rank` approximation of the update scale · B·A, for llama.cpp's alpha / rank, and the
    share of the update's energy it keeps. B·A = Qb·Rb·(Qa·Ra)ᵀ, so the SVD of the small Rb·Raᵀ gives the
    update's."""
    qb, rb = np.linalg.qr(b.astype(np.float64))
    qa, ra = np.linalg.qr(a.T.astype(np.float64))
    u, singular, vt = np.linalg.svd(rb @ ra.T)
    singular = singular * scale
    root = np.sqrt(singular[:rank])
    new_b = (qb @ u[:, :rank]) * root / (alpha / rank)
    new_a = root[:, None] * (vt[:rank] @ qa.T)
    return new_a, new_b, float((singular[:rank] ** 2).sum() / (singular**2).sum())


def _check_compatible(first_path: Path, first: AdapterTensors, path: Path, adapter: AdapterTensors) -> None:
    if adapter.arch != first.arch:
        raise MergeError(f"{path} adapts a {adapter.arch} model, {first_path} a {first.arch} model")
    if adapter.tensors.keys() != first.tensors.keys():
        raise MergeError(f"{path} adapts other weights than {first_path}")
    for name, tensor in adapter.tensors.items():
        other = first.tensors[name]
        kept = 1 if name.endswith(".lora_a") else 0  # the axis that is not the rank: A's input, B's output
        if tensor.shape[kept] != other.shape[kept]:
            raise MergeError(f"{path}: {name} has shape {tensor.shape}, {first_path} {other.shape}")
