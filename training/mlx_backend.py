"""LoRA training with mlx-lm's tuner (Apple Silicon; `sentimon train` picks it there, training/trainers.py).

Import this module only where mlx-lm is installed; it shares the settings and the tokenization of the torch
trainer, so torch and transformers must be installed as well. The examples are tokenized exactly as for torch
(training/packing.py) and the loss weighs the same tokens alike: the prompt and the excluded completion spans
not at all, the label values by `label_weight`.
mlx-lm's trainer runs the steps with its own batching (length-sorted, padded) and saves `mlx/adapters.safetensors`
+ `mlx/adapter_config.json`, which `mlx_lm.load(model, adapter_path=...)` reads; the same weights are also
written as a peft adapter (`peft/`), which training/export.py turns into the llama.cpp GGUF adapter. Unlike the
torch trainer it keeps no optimizer state: an interrupted run starts over. mlx runs on Linux too (`mlx[cpu]`,
slowly), which is how the tests run it for real.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx_lm import load
from mlx_lm.tuner.trainer import TrainingArgs, train
from mlx_lm.tuner.utils import linear_to_lora_layers
from safetensors.torch import load_file, save_file

from training.convert import load_tokenizer
from training.export import ADAPTER_WEIGHTS as PEFT_WEIGHTS
from training.lora import TrainingError, TrainResult, TrainSettings, lora_config, progress_bar
from training.mlx_adapter import ADAPTER_WEIGHTS, write_mlx_config
from training.packing import EncodedExample, TrainingExample, as_example, encode

MLX_DIR = "mlx"
PEFT_DIR = "peft"
_PAD_TO = 32


def train_lora_mlx(
    examples: Sequence[TrainingExample | tuple],
    *,
    model_path: Path,
    out_dir: Path,
    settings: TrainSettings = TrainSettings(),
    progress: bool = True,
) -> TrainResult:
    """Train a LoRA adapter for the MLX model in `model_path` (a Hugging Face-layout directory, e.g.
    training.convert.hf_base_dir of the GGUF) and save it in `out_dir`: mlx-lm's format in `mlx/`, peft's in
    `peft/` (the result's adapter_dir)."""
    if not examples:
        raise TrainingError("no training examples")
    encoded = encode(
        [as_example(item) for item in examples], load_tokenizer(model_path), settings.max_tokens, settings.label_weight
    )
    batch_size = max(1, min(len(encoded), settings.batch_tokens // max(len(e.tokens) for e in encoded)))
    per_epoch = math.ceil(len(encoded) / batch_size)
    total = settings.epochs * per_epoch
    iterations = min(total, settings.max_steps) if settings.max_steps else total

    mx.random.seed(settings.seed)
    np.random.seed(settings.seed)  # mlx-lm's batch order
    model, _ = load(str(model_path))
    model.freeze()
    lora_parameters = {
        "rank": settings.rank,
        "scale": settings.alpha / settings.rank,
        "dropout": settings.dropout,
        "keys": sorted(_lora_keys(model, settings.target_modules)),
    }
    linear_to_lora_layers(model, len(model.layers), lora_parameters)

    mlx_dir = Path(out_dir) / MLX_DIR
    write_mlx_config(mlx_dir, len(model.layers), lora_parameters)
    warmup = math.ceil(settings.warmup_ratio * iterations)
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(0.0, settings.learning_rate, max(1, warmup)),
            optim.linear_schedule(settings.learning_rate, 0.0, max(1, iterations - warmup)),
        ],
        [warmup],
    )
    started = time.monotonic()
    with _ProgressReport(iterations, progress) as report:
        train(
            model=model,
            optimizer=optim.AdamW(learning_rate=schedule, weight_decay=settings.weight_decay),
            train_dataset=encoded,
            val_dataset=None,  # no validation passes: nothing here reads a validation loss
            args=TrainingArgs(
                batch_size=batch_size,
                iters=iterations,
                steps_per_report=1,
                steps_per_save=settings.checkpoint_every,
                max_seq_length=settings.max_tokens,
                adapter_file=str(mlx_dir / ADAPTER_WEIGHTS),
            ),
            loss=masked_loss,
            iterate_batches=iterate_batches,
            training_callback=report,
        )
    seconds = time.monotonic() - started
    return TrainResult(
        adapter_dir=as_peft_adapter(mlx_dir, settings, Path(out_dir) / PEFT_DIR), steps_done=iterations,
        total_steps=total, resumed_from_step=0, losses=tuple(report.losses), seconds=seconds,
        example_tokens=round(sum(len(e.tokens) for e in encoded) * iterations / per_epoch),  # batches vary in size
    )  # fmt: skip


def as_peft_adapter(mlx_dir: Path, settings: TrainSettings, out_dir: Path) -> Path:
    """mlx-lm's adapter as a peft one. mlx-lm adds scale · (x·lora_a)·lora_b with lora_a (in × r), lora_b
    (r × out) and scale = alpha / r; peft adds alpha / r · B·(A·x) with A (r × in), B (out × r)."""
    peft = {}
    for key, value in load_file(mlx_dir / ADAPTER_WEIGHTS).items():
        module, _, matrix = key.rpartition(".lora_")
        peft[f"base_model.model.{module}.lora_{matrix.upper()}.weight"] = value.T.contiguous()
    lora_config(settings).save_pretrained(out_dir)  # the adapter_config.json the torch trainer writes
    save_file(peft, out_dir / PEFT_WEIGHTS)
    return out_dir


def _lora_keys(model, targets: Sequence[str]) -> set[str]:
    """Module paths inside a decoder layer ("self_attn.q_proj", "mlp.down_proj") whose last part is a target."""
    keys = {name for name, _ in model.layers[0].named_modules() if name.rpartition(".")[2] in targets}
    if not keys:
        raise TrainingError(f"the model's layers have none of the LoRA target modules {', '.join(targets)}")
    return keys


def iterate_batches(
    dataset: Sequence[EncodedExample], batch_size: int, max_seq_length: int, train: bool = False, **_: object
) -> Iterator[tuple[mx.array, mx.array]]:
    """mlx-lm's batching (length-sorted batches in random order, padded to a multiple of 32) yielding token
    rows and per-target loss weights instead of (offset, length) pairs."""
    order = sorted(range(len(dataset)), key=lambda i: len(dataset[i].tokens))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    while True:
        for index in np.random.permutation(len(batches)):
            yield _batch_arrays([dataset[i] for i in batches[index]], max_seq_length)
        if not train:
            return


def _batch_arrays(examples: Sequence[EncodedExample], max_seq_length: int) -> tuple[mx.array, mx.array]:
    longest = max(len(example.tokens) for example in examples)
    width = min(max_seq_length, _PAD_TO * math.ceil(longest / _PAD_TO))
    tokens = np.zeros((len(examples), width), np.int32)
    weights = np.zeros((len(examples), width - 1), np.float32)  # weights[t] belongs to the target tokens[t + 1]
    for row, example in enumerate(examples):
        tokens[row, : len(example.tokens)] = example.tokens
        weights[row, example.prompt_len - 1 : len(example.tokens) - 1] = example.loss_weights
    return mx.array(tokens), mx.array(weights)


def masked_loss(model: nn.Module, tokens: mx.array, weights: mx.array) -> tuple[mx.array, mx.array]:
    logits = model(tokens[:, :-1])
    losses = nn.losses.cross_entropy(logits, tokens[:, 1:]) * weights
    # mlx-lm reads the second value as the step's token count (its tokens/s), so it counts tokens, not weight.
    return losses.astype(mx.float32).sum() / weights.sum(), (weights > 0).sum()


class _ProgressReport:
    """mlx-lm training callback that drives the progress bar."""

    def __init__(self, iterations: int, show: bool) -> None:
        self.losses: list[float] = []
        self._bar = progress_bar(show)
        self._task = self._bar.add_task("LoRA (mlx)", total=iterations, loss=float("nan"), rate=0.0)

    def __enter__(self) -> _ProgressReport:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def on_train_loss_report(self, info: dict) -> None:
        self.losses.append(info["train_loss"])
        self._bar.update(
            self._task, completed=info["iteration"], loss=info["train_loss"], rate=info["tokens_per_second"]
        )
