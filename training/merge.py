"""The weight average of LoRA adapters trained from one base model (a "model soup"), as one llama.cpp adapter.

Adapter i adds alpha_i / r_i · B_i·A_i to a weight. Stacking the A matrices (rank R = r_1 + … + r_k) and placing
the B matrices side by side, each B_i scaled by c_i = (alpha_i / r_i) / k · R / alpha, gives an adapter of rank R
whose update alpha / R · Σ c_i·B_i·A_i is exactly the mean of theirs: no approximation, no training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.adapter_file import AdapterTensors, read_adapter_gguf, write_adapter_gguf


class MergeError(ValueError):
    """The adapters can't be averaged; the message names the file at fault."""


def merge_adapters(paths: Sequence[Path], out_path: Path) -> Path:
    """Write the mean of the adapters at `paths` to `out_path`."""
    if len(paths) < 2:
        raise MergeError("averaging needs at least two adapters")
    adapters = [read_adapter_gguf(path) for path in paths]
    first = adapters[0]
    for path, adapter in zip(paths[1:], adapters[1:], strict=True):
        _check_compatible(paths[0], first, path, adapter)
    alpha = first.alpha
    merged: dict[str, np.ndarray] = {}
    for name in first.tensors:
        if not name.endswith(".lora_a"):
            continue
        b_name = name.removesuffix("_a") + "_b"
        ranks = [adapter.tensors[name].shape[0] for adapter in adapters]
        total = sum(ranks)
        scales = [(adapter.alpha / rank) / len(adapters) * total / alpha for adapter, rank in zip(adapters, ranks)]
        merged[name] = np.concatenate([adapter.tensors[name] for adapter in adapters], axis=0)
        merged[b_name] = np.concatenate(
            [adapter.tensors[b_name] * scale for adapter, scale in zip(adapters, scales)], axis=1
        ).astype(np.float32)
    return write_adapter_gguf(Path(out_path), first.arch, alpha, merged)


def _check_compatible(first_path: Path, first: AdapterTensors, path: Path, adapter: AdapterTensors) -> None:
    if adapter.arch != first.arch:
        raise MergeError(f"{path} adapts a {adapter.arch} model, {first_path} a {first.arch} model")
    if adapter.tensors.keys() != first.tensors.keys():
        raise MergeError(f"{path} adapts other weights than {first_path}")
    for name, tensor in adapter.tensors.items():
        other = first.tensors[name]
        kept = tensor.shape[1] if name.endswith(".lora_a") else tensor.shape[0]  # in / out, not the rank
        if kept != (other.shape[1] if name.endswith(".lora_a") else other.shape[0]):
            raise MergeError(f"{path}: {name} has shape {tensor.shape}, {first_path} {other.shape}")
