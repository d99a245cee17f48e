"""The GGUF base model as Hugging Face float32 weights, converted once and cached.

LoRA training runs in torch, inference in llama.cpp; both must see the same weights and the same tokenizer.
transformers reads the GGUF (dequantizing Q4_K/Q5_0/Q6_K/Q8_0 to float32) and builds the tokenizer from
the GGUF's own vocabulary, so nothing is downloaded. Parsing the 262k-token vocabulary takes a few
minutes on 2 cores, so the result is saved next to the model cache under the GGUF's sha256 and reused.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from model.embedded import cache_dir, sha256_file
from training.files import publish_dir

SOURCE_FILE = "source.json"

# peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` on every PeftModel it builds; the
# FutureWarning is theirs to fix and only clutters `sentimon train`'s output.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


class ConversionError(RuntimeError):
    """The GGUF can't be turned into Hugging Face weights (missing file, unsupported architecture)."""


def hf_base_dir(gguf_path: Path, *, progress: bool = True) -> Path:
    """A directory with config.json, model.safetensors and the tokenizer of `gguf_path`, converting on first use."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ConversionError(f"base model {gguf_path} does not exist (expected a .gguf file)")
    digest = sha256_file(gguf_path)

    def build(folder: Path) -> None:
        _convert(gguf_path, folder, progress=progress)
        (folder / SOURCE_FILE).write_text(json.dumps({"gguf": gguf_path.name, "sha256": digest}, indent=2),
                                          encoding="utf-8")  # fmt: skip

    return publish_dir(cache_dir() / f"{gguf_path.stem}.hf-{digest[:16]}", build, marker=SOURCE_FILE)


def load_base_model(hf_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)


@functools.lru_cache(maxsize=4)
def load_tokenizer(hf_dir: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the weights (parsing its 262k-token vocabulary takes seconds, so it is kept)."""
    return AutoTokenizer.from_pretrained(hf_dir)


def _convert(gguf_path: Path, out_dir: Path, *, progress: bool) -> None:
    folder, name = str(gguf_path.parent), gguf_path.name
    with _steps(f"Converting {name} to Hugging Face weights (once per model)", progress) as step:
        try:
            step("reading the tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            step("dequantizing the weights to float32")
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except (ValueError, KeyError, OSError) as exc:
            raise ConversionError(f"transformers cannot load {gguf_path} for training: {exc}") from exc
        step(f"writing {out_dir.name}")
        # The weights are plain float32 now; drop the GGUF quantizer so transformers agrees to save them.
        model.hf_quantizer = None
        del model.config.quantization_config
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)


@contextlib.contextmanager
def _steps(title: str, show: bool) -> Iterator:
    """A one-line status: spinner, title, current step, elapsed time (silent when `show` is false)."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, transient=True, disable=not show) as bar:
        task = bar.add_task(title)

        def step(what: str) -> None:
            bar.update(task, description=f"{title}: {what}")

        # transformers' own tqdm bars (one of them ignores disable_progress_bar) would fight with this line.
        with contextlib.redirect_stderr(io.StringIO()):
            yield step
