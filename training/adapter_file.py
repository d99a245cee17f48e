"""llama.cpp LoRA adapter files (GGUF, general.type = "adapter"): reading and writing their tensors.

Per adapted weight `<name>.lora_a` holds A (r x in) and `<name>.lora_b` holds B (out x r), in float32;
llama.cpp adds alpha / r · B·(A·x) to that weight's output, r being each A's row count."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

# convert_hf_to_gguf.py's LlamaModel reorders q/k rows for its rotary layout: an adapter's lora_b would need the
# same permutation, so such architectures are refused.
_PERMUTED_QK = {"llama"}


class AdapterFileError(ValueError):
    """The file is not a llama.cpp LoRA adapter; the message names it."""


@dataclass(frozen=True)
class AdapterTensors:
    arch: str
    alpha: float
    tensors: dict[str, np.ndarray]  # name -> A (r x in) or B (out x r)


def read_adapter_gguf(path: Path) -> AdapterTensors:
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise AdapterFileError(f"{path}: not a readable GGUF file ({exc})") from None
    fields = {name: _scalar(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    kind = fields.get("general.type"), fields.get("adapter.type")
    if kind != ("adapter", "lora"):
        raise AdapterFileError(f"{path}: a GGUF file, but not a LoRA adapter (general.type {kind[0]!r}, "
                               f"adapter.type {kind[1]!r})")  # fmt: skip
    tensors = {tensor.name: np.array(tensor.data, dtype=np.float32) for tensor in reader.tensors}
    return AdapterTensors(fields["general.architecture"], float(fields["adapter.lora.alpha"]), tensors)


def write_adapter_gguf(out_path: Path, arch: str, alpha: float, tensors: dict[str, np.ndarray]) -> Path:
    """Write a llama.cpp LoRA adapter file: readers see the old file or the whole new one."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f"{out_path.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(partial, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
    return out_path


def tensor_names(arch: str, blocks: int) -> gguf.TensorNameMap:
    """Hugging Face module name -> GGUF tensor name for a model of this architecture."""
    if arch in _PERMUTED_QK:
        raise AdapterFileError(
            f"the base model is a {arch} model, whose GGUF permutes q/k weights; adapters can be converted "
            "for architectures that keep them in Hugging Face order (gemma3, qwen2, ...)"
        )
    for arch_id, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return gguf.get_tensor_name_map(arch_id, blocks)
    raise AdapterFileError(f"the gguf package does not know architecture {arch!r}")


def _scalar(field: gguf.ReaderField) -> str | float | None:
    if not field.data:
        return None
    value = field.parts[field.data[0]]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(value).decode("utf-8", errors="replace")
    return value[0].item() if len(value) == 1 else None
