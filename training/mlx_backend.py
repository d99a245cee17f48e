"""LoRA training on Apple Silicon with mlx-lm's tuner, saving an adapter in mlx-lm's format.

Import this module only where mlx-lm is installed (macOS on Apple Silicon); it shares the settings and
the tokenization of the torch trainer, so torch and transformers must be installed as well. The examples
are tokenized exactly as for torch (training/packing.py) and the loss skips the same tokens: the prompt and
the excluded completion spans. mlx-lm's trainer runs the steps with its own batching (length-sorted,
padded) and saves `adapters.safetensors` + `adapter_config.json`, which `mlx_lm.load(model,
adapter_path=dir)` reads. Unlike the torch trainer it keeps no optimizer state: an interrupted run starts
over. Written against mlx-lm's tuner API (train(model, optimizer, train_dataset, val_dataset, args, loss,
iterate_batches, training_callback)); tested here with stand-in modules only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx_lm import load
from mlx_lm.tuner.trainer import TrainingArgs, train
from mlx_lm.tuner.utils import linear_to_lora_layers

from training.convert import load_tokenizer
from training.lora import TrainingError, TrainSettings, progress_bar
from training.packing import EncodedExample, TrainingExample, as_example, encode

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PAD_TO = 32


@dataclass(frozen=True)
class MlxTrainResult:
    adapter_dir: Path  # mlx-lm adapter directory
    iterations: int
    last_loss: float


def train_lora_mlx(
    examples: Sequence[TrainingExample | tuple],
    *,
    model_path: Path,
    out_dir: Path,
    settings: TrainSettings = TrainSettings(),
    progress: bool = True,
) -> MlxTrainResult:
    """Train a LoRA adapter for the MLX model in `model_path` (a Hugging Face-layout directory, e.g.
    training.convert.hf_base_dir of the GGUF) and save it in `out_dir`."""
    if not examples:
        raise TrainingError("no training examples")
    encoded = encode([as_example(item) for item in examples], load_tokenizer(model_path), settings.max_tokens)
    batch_size = max(1, min(len(encoded), settings.batch_tokens // max(len(e.tokens) for e in encoded)))
    iterations = settings.epochs * math.ceil(len(encoded) / batch_size)
    if settings.max_steps:
        iterations = min(iterations, settings.max_steps)

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

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ADAPTER_CONFIG).write_text(
        json.dumps({"fine_tune_type": "lora", "num_layers": len(model.layers), "lora_parameters": lora_parameters}),
        encoding="utf-8",
    )
    warmup = math.ceil(settings.warmup_ratio * iterations)
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(0.0, settings.learning_rate, max(1, warmup)),
            optim.linear_schedule(settings.learning_rate, 0.0, max(1, iterations - warmup)),
        ],
        [warmup],
    )
    with _ProgressReport(iterations, progress) as report:
        train(
            model=model,
            optimizer=optim.AdamW(learning_rate=schedule, weight_decay=settings.weight_decay),
            train_dataset=encoded,
            val_dataset=encoded[:batch_size],
            args=TrainingArgs(
                batch_size=batch_size,
                iters=iterations,
                val_batches=1,
                steps_per_report=1,
                steps_per_eval=iterations + 1,
                steps_per_save=settings.checkpoint_every,
                max_seq_length=settings.max_tokens,
                adapter_file=str(out_dir / ADAPTER_WEIGHTS),
            ),
            loss=masked_loss,
            iterate_batches=iterate_batches,
            training_callback=report,
        )
    return MlxTrainResult(out_dir, iterations, report.last_loss)


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
        weights[row, example.prompt_len - 1 : len(example.tokens) - 1] = example.in_loss
    return mx.array(tokens), mx.array(weights)


def masked_loss(model: nn.Module, tokens: mx.array, weights: mx.array) -> tuple[mx.array, mx.array]:
    logits = model(tokens[:, :-1])
    losses = nn.losses.cross_entropy(logits, tokens[:, 1:]) * weights
    count = weights.sum()
    return losses.astype(mx.float32).sum() / count, count


class _ProgressReport:
    """mlx-lm training callback that drives the progress bar."""

    def __init__(self, iterations: int, show: bool) -> None:
        self.last_loss = float("nan")
        self._bar = progress_bar(show)
        self._task = self._bar.add_task("LoRA (mlx)", total=iterations, loss=float("nan"), rate=0.0)

    def __enter__(self) -> _ProgressReport:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def on_train_loss_report(self, info: dict) -> None:
        self.last_loss = info["train_loss"]
        self._bar.update(
            self._task, completed=info["iteration"], loss=info["train_loss"], rate=info["tokens_per_second"]
        )

    def on_val_loss_report(self, info: dict) -> None:
        pass
