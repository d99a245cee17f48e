"""LoRA fine-tuning of the GGUF base model with torch + peft on CPU.

Run it in its own process: `train_lora` lowers the priority of the process that calls it (os.nice), so
training only gets the CPU that ingestion leaves. From a shell or a subprocess:

    python -m training.lora --examples train.jsonl --base model.gguf --out runs/v3 \
        [--settings settings.json] [--gguf-adapter runs/v3/adapter.gguf]

`train.jsonl` holds one {"prompt", "completion", "exclude_spans"?} object a line; the result is printed as
JSON. A rerun with the same --out resumes from the last checkpoint.

Each step packs examples into one row around their shared prompt prefix (training/packing.py) and applies
the 262k-token vocabulary projection only at the positions the loss reads (the completion tokens). The loss is
their mean, the tokens of each polarity and category value weighted `label_weight` times the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.optim.lr_scheduler import LambdaLR
from transformers import PreTrainedModel

from training.attention import use_packed_attention
from training.convert import hf_base_dir, load_base_model, load_tokenizer
from training.packing import Pack, TrainingExample, as_example, build_pack, encode, plan_batches
from training.vocab_loss import projected_cross_entropy

ADAPTER_DIR = "adapter"
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.jsonl"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TrainingError(RuntimeError):
    """Training can't start or continue as asked; the message says why."""


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(16, ge=1, description="LoRA rank r of the low-rank update B·A of each adapted matrix.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha: the update is scaled by alpha / rank.")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the LoRA input during training (above 0 it costs memory and time)."
    )
    target_modules: tuple[str, ...] = Field(
        LORA_TARGETS, min_length=1, description="Linear layers that get an adapter: attention q/k/v/o and the MLP."
    )
    label_weight: float = Field(
        1.0,
        gt=0,
        description="Loss weight of the polarity and category value tokens, against 1 for the rest of the answer.",
    )
    learning_rate: float = Field(3e-4, gt=0, description="Peak AdamW learning rate.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of the steps spent warming the rate up from 0.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on the LoRA matrices.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradients are clipped to this global norm.")
    epochs: int = Field(2, ge=1, description="Passes over the examples.")
    batch_tokens: int = Field(
        1024,
        ge=64,
        description="Tokens per optimizer step, the prompt prefix shared by the step's examples counted once.",
    )
    max_tokens: int = Field(
        1280, ge=16, description="Longest example (prompt + completion) accepted; a longer one is an error."
    )
    seed: int = Field(0, description="Seed of the adapter's initial weights, the example order and dropout.")
    threads: int = Field(2, ge=1, description="CPU threads torch may use.")
    nice: int = Field(10, ge=0, le=19, description="Niceness added to the training process (0 keeps its priority).")
    checkpoint_every: int = Field(20, ge=1, description="Write a resumable checkpoint every this many steps.")
    max_steps: int | None = Field(
        None,
        ge=1,
        description=(
            "Stop at this global step even if epochs remain; a later run resumes from there. "
            "The learning-rate schedule still spans all epochs."
        ),
    )


# Settings that change what is learned; the others (threads, checkpoints, where to stop) may differ on resume.
_RUN_DEFINING = {
    "rank", "alpha", "dropout", "target_modules", "label_weight", "learning_rate", "warmup_ratio", "weight_decay",
    "max_grad_norm", "epochs", "batch_tokens", "max_tokens", "seed",
}  # fmt: skip


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path  # peft adapter (adapter_config.json, adapter_model.safetensors), for export_gguf_adapter
    steps_done: int  # global step reached
    total_steps: int  # steps of all epochs
    resumed_from_step: int  # 0 on a fresh run
    losses: tuple[float, ...]  # mean completion-token loss of every step so far, resumed steps included
    example_tokens: int  # tokens of the examples trained on in this run, as if each were alone
    seconds: float  # wall time of this run's steps

    @property
    def finished(self) -> bool:
        return self.steps_done == self.total_steps

    @property
    def tokens_per_second(self) -> float:
        return self.example_tokens / self.seconds if self.seconds else 0.0


def train_lora(
    examples: Sequence[TrainingExample | tuple[str, str] | tuple[str, str, Sequence[tuple[int, int]]]],
    *,
    base_gguf: Path,
    out_dir: Path,
    settings: TrainSettings = TrainSettings(),
    progress: bool = True,
) -> TrainResult:
    """Train a LoRA adapter on (prompt, completion) examples and save it in `out_dir/adapter`.

    Resumes from `out_dir/checkpoint.pt` when one exists for the same examples, settings and base model."""
    if not examples:
        raise TrainingError("no training examples")
    os.nice(settings.nice)
    torch.set_num_threads(settings.threads)
    hf_dir = hf_base_dir(Path(base_gguf), progress=progress)
    encoded = encode(
        [as_example(item) for item in examples], load_tokenizer(hf_dir), settings.max_tokens, settings.label_weight
    )
    plan = [
        (epoch, batch)
        for epoch in range(1, settings.epochs + 1)
        for batch in plan_batches(encoded, settings.batch_tokens, settings.seed, epoch)
    ]
    fingerprint = _fingerprint(settings, hf_dir, [(e.tokens, e.loss_weights) for e in encoded])

    torch.manual_seed(settings.seed)
    model = lora_model(load_base_model(hf_dir), settings)
    optimizer, schedule = _optimizer(model, settings, len(plan))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / CHECKPOINT_FILE
    losses = _resume(checkpoint, fingerprint, model, optimizer, schedule) if checkpoint.is_file() else []
    start, stop = len(losses), min(len(plan), settings.max_steps or len(plan))

    model.train()
    example_tokens, began = 0, time.perf_counter()
    with progress_bar(progress) as bar, (out_dir / LOG_FILE).open("a", encoding="utf-8") as log:
        task = bar.add_task("LoRA", total=len(plan), completed=start, loss=float("nan"), rate=0.0)
        for step in range(start, stop):
            epoch, batch = plan[step]
            pack = build_pack([encoded[i] for i in batch])
            losses.append(_train_step(model, optimizer, schedule, pack, settings.max_grad_norm))
            example_tokens += pack.example_tokens
            elapsed = time.perf_counter() - began
            rate = example_tokens / elapsed
            bar.update(task, advance=1, description=f"LoRA epoch {epoch}/{settings.epochs}", loss=losses[-1], rate=rate)
            entry = {"step": step + 1, "epoch": epoch, "loss": losses[-1], "lr": schedule.get_last_lr()[0],
                     "examples": len(batch), "row_tokens": pack.input_ids.shape[1],
                     "example_tokens": pack.example_tokens, "seconds": round(elapsed, 3)}  # fmt: skip
            log.write(json.dumps(entry) + "\n")
            log.flush()
            if (step + 1) % settings.checkpoint_every == 0 or step + 1 == stop:
                _save_checkpoint(checkpoint, fingerprint, model, optimizer, schedule, losses)
    seconds = time.perf_counter() - began

    adapter_dir = out_dir / ADAPTER_DIR
    model.save_pretrained(adapter_dir)
    return TrainResult(adapter_dir, len(losses), len(plan), start, tuple(losses), example_tokens, seconds)


def _optimizer(model: PeftModel, settings: TrainSettings, steps: int) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW over the LoRA matrices; linear warm-up to the peak rate, then linear decay to zero at the last step."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    warmup = math.ceil(settings.warmup_ratio * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return optimizer, LambdaLR(optimizer, factor)


def _train_step(
    model: PeftModel, optimizer: torch.optim.Optimizer, schedule: LambdaLR, pack: Pack, max_grad_norm: float
) -> float:
    loss = completion_loss(model, pack)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def lora_model(base: PreTrainedModel, settings: TrainSettings) -> PeftModel:
    """`base` with LoRA adapters (B = 0, so it still computes the base model) and packed-row attention."""
    use_packed_attention(base)
    return get_peft_model(base, lora_config(settings))


def lora_config(settings: TrainSettings) -> LoraConfig:
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def completion_loss(model: torch.nn.Module, pack: Pack) -> torch.Tensor:
    """Weighted mean cross-entropy of the pack's loss tokens. The decoder runs over the whole row, but the vocabulary
    projection (262k rows for Gemma) only at the positions that predict a loss token, chunk by chunk."""
    causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
    # No mask per layer type: the decoder builds no (L x L) masks; packed attention makes its own per example.
    no_masks = dict.fromkeys(getattr(causal_lm.config, "layer_types", None) or ["full_attention"])
    hidden = causal_lm.get_decoder()(
        input_ids=pack.input_ids,
        position_ids=pack.position_ids,
        attention_mask=no_masks,
        packed_row=pack,
        use_cache=False,
    ).last_hidden_state
    return projected_cross_entropy(
        hidden[0, pack.predict_at],
        causal_lm.get_output_embeddings().weight,
        pack.targets,
        getattr(causal_lm.config, "final_logit_softcapping", None),
        pack.weights,
    )


def _fingerprint(settings: TrainSettings, hf_dir: Path, encoded: list[tuple[tuple, tuple]]) -> str:
    digest = hashlib.sha256()
    digest.update(settings.model_dump_json(include=_RUN_DEFINING).encode())
    digest.update(hf_dir.name.encode())  # carries the base GGUF's sha256
    digest.update(repr(encoded).encode())
    return digest.hexdigest()


def _save_checkpoint(
    path: Path, fingerprint: str, model: PeftModel, optimizer: torch.optim.Optimizer, schedule: LambdaLR,
    losses: list[float],
) -> None:  # fmt: skip
    state = {
        "fingerprint": fingerprint,
        "lora": get_peft_model_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "losses": losses,
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _resume(
    path: Path, fingerprint: str, model: PeftModel, optimizer: torch.optim.Optimizer, schedule: LambdaLR
) -> list[float]:
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:  # a torn or foreign file: say which and how to get past it
        raise TrainingError(f"checkpoint {path} can't be read ({exc}); delete it to train from the start") from exc
    if state.get("fingerprint") != fingerprint:
        raise TrainingError(
            f"checkpoint {path} belongs to a different run (other examples, settings or base model); "
            "delete it or choose another output directory"
        )
    set_peft_model_state_dict(model, state["lora"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return list(state["losses"])


def progress_bar(show: bool) -> Progress:
    """Training progress: description, bar, steps, loss and rate fields, elapsed time and ETA."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[rate]:.0f} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not show,
        speed_estimate_period=600,  # steps take seconds; average the ETA over the last ten minutes
    )


def read_examples(path: Path) -> list[TrainingExample]:
    """Examples from a JSONL file of {"prompt", "completion", "exclude_spans"?} objects."""
    examples = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                examples.append(
                    as_example((record["prompt"], record["completion"], record.get("exclude_spans") or ()))
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise TrainingError(
                    f"{path} line {number}: expected {{\"prompt\": str, \"completion\": str, "
                    f"\"exclude_spans\": [[start, end], ...]}}: {exc!r}"
                ) from None
    return examples


def settings_problems(exc: ValidationError) -> str:
    """What is wrong with invalid TrainSettings, each problem with the setting it is about."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())


def _read_settings(path: Path) -> TrainSettings:
    try:
        return TrainSettings.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise TrainingError(f"{path}: {settings_problems(exc)}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=Path, required=True, help="JSONL of prompt/completion examples")
    parser.add_argument("--base", type=Path, required=True, help="base model GGUF")
    parser.add_argument("--out", type=Path, required=True, help="run directory (checkpoint, log, adapter)")
    parser.add_argument("--settings", type=Path, help="JSON object of TrainSettings fields")
    parser.add_argument("--gguf-adapter", type=Path, help="also export the adapter for llama.cpp here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        settings = _read_settings(args.settings) if args.settings else TrainSettings()
        result = train_lora(
            read_examples(args.examples), base_gguf=args.base, out_dir=args.out, settings=settings,
            progress=not args.quiet,
        )  # fmt: skip
        report = {**dataclasses.asdict(result), "adapter_dir": str(result.adapter_dir)}
        if args.gguf_adapter and result.finished:
            from training.export import export_gguf_adapter

            report["gguf_adapter"] = str(export_gguf_adapter(result.adapter_dir, args.base, args.gguf_adapter))
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report["losses"] = report["losses"][-5:]  # the full history is in train_log.jsonl
    print(json.dumps({**report, "tokens_per_second": result.tokens_per_second}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
