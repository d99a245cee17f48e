"""A peft LoRA adapter as a llama.cpp adapter GGUF, and a numerical check that llama.cpp applies it as torch does.

The file follows llama.cpp's convert_lora_to_gguf.py: general.type = "adapter", adapter.type = "lora",
adapter.lora.alpha, and per adapted weight `<gguf weight name>.lora_a` (peft's lora_A, r x in, ggml
ne = [in, r]) and `.lora_b` (lora_B, out x r, ne = [r, out]), in float32. llama.cpp computes
W·x + alpha / r · B·(A·x), peft's own scaling without rsLoRA. Gemma's q/k weights keep Hugging Face's row
order in GGUF (training/adapter_file.py refuses architectures that permute them). Norm weights are not adapted.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from llama_cpp import Llama
from safetensors.torch import load_file

from training.adapter_file import AdapterFileError, tensor_names, write_adapter_gguf

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


class ExportError(ValueError):
    """The adapter can't be written for llama.cpp; the message names the file or setting at fault."""


def export_gguf_adapter(peft_dir: Path, base_gguf: Path, out_path: Path) -> Path:
    """Write the adapter in `peft_dir` as a llama.cpp LoRA GGUF for the model `base_gguf`."""
    peft_dir, out_path = Path(peft_dir), Path(out_path)
    config = _adapter_config(peft_dir)
    arch, blocks = _architecture(Path(base_gguf))
    try:
        names = tensor_names(arch, blocks)
    except AdapterFileError as exc:
        raise ExportError(str(exc)) from None
    weights = load_file(peft_dir / ADAPTER_WEIGHTS)

    tensors: dict[str, np.ndarray] = {}
    for key, value in sorted(weights.items()):
        module, _, kind = key.removeprefix(_PEFT_PREFIX).rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            raise ExportError(f"{peft_dir / ADAPTER_WEIGHTS}: tensor {key} is not a LoRA A/B matrix")
        gguf_name = names.get_name(module)
        if gguf_name is None:
            raise ExportError(f"{peft_dir / ADAPTER_WEIGHTS}: no {arch} GGUF tensor for module {module}")
        suffix = ".weight.lora_a" if kind == "A.weight" else ".weight.lora_b"
        tensors[gguf_name + suffix] = value.float().contiguous().numpy()

    return write_adapter_gguf(out_path, arch, float(config["lora_alpha"]), tensors)


def _adapter_config(peft_dir: Path) -> dict:
    path = peft_dir / ADAPTER_CONFIG
    if not path.is_file() or not (peft_dir / ADAPTER_WEIGHTS).is_file():
        raise ExportError(f"{peft_dir} is not a peft adapter directory ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise ExportError(f"{path}: peft_type is {config.get('peft_type')!r}; only LORA adapters can be exported")
    # llama.cpp scales every adapted weight by one alpha / r: anything else would change the model silently.
    unsupported = [key for key in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern") if config.get(key)]
    if unsupported:
        raise ExportError(f"{path}: llama.cpp adapters can't express {', '.join(unsupported)}")
    return config


def _architecture(base_gguf: Path) -> tuple[str, int]:
    """(general.architecture, block count) of the base GGUF, read by llama.cpp from its header."""
    if not base_gguf.is_file():
        raise ExportError(f"base model {base_gguf} does not exist")
    llm = _llama(base_gguf, vocab_only=True)
    arch = llm.metadata["general.architecture"]
    return arch, int(llm.metadata[f"{arch}.block_count"])


def _llama(path: Path, **options) -> Llama:
    with contextlib.redirect_stderr(io.StringIO()):  # llama.cpp's load chatter
        return Llama(str(path), verbose=False, **options)


@dataclass(frozen=True)
class LogitGap:
    """How far two sets of logits over the same positions are apart."""

    max_abs: float
    mean_abs: float
    top1_agreement: float  # share of positions where both pick the same most likely token

    @classmethod
    def between(cls, a: np.ndarray, b: np.ndarray) -> LogitGap:
        gap = np.abs(a - b)
        return cls(float(gap.max()), float(gap.mean()), float((a.argmax(-1) == b.argmax(-1)).mean()))


# What check_export accepts. llama.cpp quantizes activations to 8 bits for its quantized matmuls, so even
# the base model's logits differ from torch's float32 ones (the floor: ~0.2 mean, ~1.7 max on Gemma 3 270M).
# With the adapter they may differ by the floor (x1.5: the adapter changes the activations that get rounded)
# plus 5% of the adapter's own effect: an export error grows with that effect (an alpha 12.5% off made the
# gap 0.67 where the allowance was 0.50; the correct file's gap was 0.19).
MAX_FLOOR_RATIO = 1.5
MAX_SHIFT_SHARE = 0.05
MAX_TOP1_LOSS = 0.05


@dataclass(frozen=True)
class ExportCheck:
    positions: int  # probe positions compared
    base: LogitGap  # llama.cpp base vs torch base (the same weights dequantized): the floor
    adapted: LogitGap  # llama.cpp base + adapter GGUF vs torch base + merged LoRA
    adapter_shift: float  # mean |logit change| the adapter causes in torch
    shift_error: float  # mean |llama.cpp's logit change - torch's|: both floors' noise, nothing more if right

    @property
    def ok(self) -> bool:
        allowed = MAX_FLOOR_RATIO * self.base.mean_abs + MAX_SHIFT_SHARE * self.adapter_shift
        return (
            self.adapted.mean_abs <= allowed
            and self.adapted.top1_agreement >= self.base.top1_agreement - MAX_TOP1_LOSS
        )


def check_export(
    peft_dir: Path, base_gguf: Path, adapter_gguf: Path, probes: Sequence[str], *, last_tokens: int = 16
) -> ExportCheck:
    """Compare logits at the last `last_tokens` positions of each probe text (BOS is added): llama.cpp running
    `base_gguf` with and without `adapter_gguf` against torch running the same base dequantized (the cached
    conversion) with and without the peft adapter in `peft_dir` merged into its weights."""
    from peft import PeftModel

    from training.convert import hf_base_dir, load_base_model

    hf_dir = hf_base_dir(Path(base_gguf))

    llama_base = _llama_logits(_llama(Path(base_gguf), **_probe_context(probes)), probes, last_tokens)
    llama_adapted = _llama_logits(
        _llama(Path(base_gguf), lora_path=str(adapter_gguf), **_probe_context(probes)), probes, last_tokens
    )
    tokenize = _llama(Path(base_gguf), vocab_only=True).tokenize
    token_ids = [tokenize(text.encode("utf-8"), add_bos=True) for text in probes]
    with torch.no_grad():
        model = load_base_model(hf_dir)
        torch_base = _torch_logits(model, token_ids, last_tokens)
        merged = PeftModel.from_pretrained(model, peft_dir).merge_and_unload()
        torch_adapted = _torch_logits(merged, token_ids, last_tokens)
    return ExportCheck(
        positions=len(torch_base),
        base=LogitGap.between(llama_base, torch_base),
        adapted=LogitGap.between(llama_adapted, torch_adapted),
        adapter_shift=float(np.abs(torch_adapted - torch_base).mean()),
        shift_error=float(np.abs((llama_adapted - llama_base) - (torch_adapted - torch_base)).mean()),
    )


def _probe_context(probes: Sequence[str]) -> dict:
    longest = max(len(text.encode("utf-8")) for text in probes)  # a token is at least one byte
    # One thread: the probes are short, and llama.cpp's threads spin at every barrier when the CPU is shared.
    return {"n_ctx": longest + 16, "n_batch": 512, "n_threads": 1, "n_threads_batch": 1, "swa_full": True}


def _llama_logits(llm: Llama, probes: Sequence[str], last_tokens: int) -> np.ndarray:
    """Logits at the last positions of each probe; those positions are decoded one at a time so that only
    one row of logits is ever needed (the vocabulary has 262k entries)."""
    import llama_cpp

    rows = []
    for text in probes:
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True)
        if len(tokens) <= last_tokens:
            raise ValueError(f"probe {text[:40]!r} has {len(tokens)} tokens; it needs more than {last_tokens}")
        llm.reset()
        llm.eval(tokens[:-last_tokens])
        for token in tokens[-last_tokens:]:
            llm.eval([token])
            logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            rows.append(np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),)).copy())
    llm.close()
    return np.stack(rows)


def _torch_logits(model: torch.nn.Module, token_ids: list[list[int]], last_tokens: int) -> np.ndarray:
    rows = [
        model(input_ids=torch.tensor([tokens]), logits_to_keep=last_tokens).logits[0].float().numpy()
        for tokens in token_ids
    ]
    return np.concatenate(rows)
