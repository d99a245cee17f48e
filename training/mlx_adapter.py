"""mlx-lm's LoRA adapter format, and a llama.cpp adapter (GGUF) turned into it: how backend "mlx" runs the
adapter registry's versions and the shipped default adapter.

mlx-lm adds scale · (x·lora_a)·lora_b with lora_a (in × r), lora_b (r × out) and scale = alpha / r; the GGUF
holds A (r × in) and B (out × r) for llama.cpp's alpha / r · B·(A·x): the same update, transposed. GGUF tensor
names map back to the Hugging Face module names that mlx-lm's models use too (`model.layers.3.self_attn.q_proj`).
Only numpy, gguf and safetensors are needed: no mlx, no torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from model.embedded import sha256_file
from training.adapter_file import AdapterFileError, AdapterTensors, read_adapter_gguf, tensor_names
from training.files import publish_dir

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# Decoder-layer modules, by their Hugging Face path inside a layer, that a LoRA adapter may adapt.
_LAYER_MODULES = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)  # fmt: skip
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def write_mlx_config(out_dir: Path, num_layers: int, lora_parameters: dict[str, Any]) -> None:
    """The adapter_config.json that `mlx_lm.load(model, adapter_path=out_dir)` reads; LoRA on the last
    `num_layers` layers with lora_parameters {rank, scale, dropout, keys}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": lora_parameters}
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config), encoding="utf-8")


def mlx_adapter_copy(adapter_gguf: Path, cache_root: Path) -> Path:
    """The mlx-lm adapter directory of `adapter_gguf`, converted on first use into cache_root/<its sha256[:16]>
    (a registry version is converted once, whichever label points at it)."""
    target = cache_root / sha256_file(adapter_gguf)[:16]
    return publish_dir(target, lambda folder: write_mlx_adapter(read_adapter_gguf(adapter_gguf), folder),
                       marker=ADAPTER_WEIGHTS)  # fmt: skip


def write_mlx_adapter(adapter: AdapterTensors, out_dir: Path) -> Path:
    """Write a llama.cpp adapter's tensors as an mlx-lm adapter directory."""
    blocks = [int(m.group(1)) for name in adapter.tensors if (m := _BLOCK.match(name))]
    if not blocks:
        raise AdapterFileError("the adapter adapts no decoder layer (no blk.N tensors)")
    layers = 1 + max(blocks)
    modules = _modules_by_gguf_name(adapter.arch, layers)
    weights, keys, ranks = {}, set(), set()
    for name, matrix in adapter.tensors.items():
        gguf_name, _, kind = name.rpartition(".weight.lora_")
        if gguf_name not in modules or kind not in ("a", "b"):
            raise AdapterFileError(f"adapter tensor {name} is not a LoRA matrix of a {adapter.arch} layer module")
        module = modules[gguf_name]
        weights[f"{module}.lora_{kind}"] = np.ascontiguousarray(matrix.T)
        keys.add(module.split(".", 3)[3])  # "model.layers.3.self_attn.q_proj" -> "self_attn.q_proj"
        if kind == "a":
            ranks.add(matrix.shape[0])
    if len(ranks) != 1:
        raise AdapterFileError(f"mlx-lm needs one LoRA rank for every module; the adapter has {sorted(ranks)}")
    rank = ranks.pop()
    lora_parameters = {"rank": rank, "scale": adapter.alpha / rank, "dropout": 0.0, "keys": sorted(keys)}
    write_mlx_config(out_dir, layers, lora_parameters)
    save_file(weights, str(out_dir / ADAPTER_WEIGHTS))
    return out_dir


def _modules_by_gguf_name(arch: str, blocks: int) -> dict[str, str]:
    names = tensor_names(arch, blocks)
    modules = (f"model.layers.{block}.{module}" for block in range(blocks) for module in _LAYER_MODULES)
    return {gguf_name: module for module in modules if (gguf_name := names.get_name(module)) is not None}
