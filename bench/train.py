"""LoRA training step benchmark: sentimon's step against the naive one, on the same examples.

    python -m bench.train [--examples 8] [--steps 3] [--threads 2] [--default-examples 40] [--markdown]

Examples come from datasets/train/team.jsonl in the prompt training and adapter inference use (the
instruction, ~75 tokens, then the article; ~140 tokens an example with its answer). Each method runs in a
fresh process (its memory peak is its own), takes one untimed warm-up step, then `--steps` timed optimizer
steps (forward, backward, AdamW) with the default TrainSettings (rank-16 LoRA on q/k/v/o and the MLP):

  naive      the examples right-padded into one batch; the model's own loss (full-vocabulary logits at
             every position, prompt and padding labelled -100)
  gathered   the same padded batch; the vocabulary projection only where a completion token is predicted
  sentimon   training.lora's step: one padding-free row sharing the prompt prefix, gathered projection

Example tokens/s counts every example's tokens once (what an unpacked batch holds, padding excluded),
so the three rates compare the same work. A last run measures sentimon's step at the default batch size
(TrainSettings.batch_tokens) on more examples, for the time per 1,000 examples.

Wall time on a machine shared with other work swings with their load; CPU time (all threads) is steadier,
so the table shows both and the idle-machine estimate spreads the CPU time over the 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from bench._common import BenchError, Machine, machine, run_in_fresh_process, usage

TEAM_SET = Path(__file__).parents[1] / "datasets" / "train" / "team.jsonl"
METHODS = ("naive", "gathered", "sentimon")


@dataclass(frozen=True)
class StepRun:
    method: str
    examples: int
    example_tokens: int  # per step, padding excluded
    row_tokens: int  # tokens the model actually processes per step, padding or shared prefix included
    loss_tokens: int
    step_s: float  # median wall time over the timed steps
    cpu_s: float  # median CPU time (all threads) of a step: steadier than wall time on a shared machine
    peak_rss_mb: float

    @property
    def tokens_per_s(self) -> float:
        return self.example_tokens / self.step_s

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.example_tokens / self.cpu_s


@dataclass(frozen=True)
class BenchResult:
    machine: Machine
    load_average: tuple[float, float, float]
    threads: int
    steps: int
    comparison: list[StepRun]
    default_batch: StepRun


def load_examples(count: int, tokenizer) -> list:
    """The first `count` team examples as the trainer gets them (model.prompt.format_training_example)."""
    from model.prompt import format_training_example
    from model.schema import EntityMention
    from training.packing import TrainingExample

    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    examples = []
    for line in TEAM_SET.read_text(encoding="utf-8").splitlines()[:count]:
        record = json.loads(line)
        mentions = [EntityMention(**m) for m in record["extractions"]]
        examples.append(TrainingExample(*format_training_example(record["text"], mentions, tokenizer_count=tokens)))
    if len(examples) < count:
        raise BenchError(f"{TEAM_SET} has {len(examples)} examples, fewer than the {count} asked for")
    return examples


def measure(method: str, count: int, steps: int, threads: int, batch_tokens: int | None) -> StepRun:
    """One method, in its own process: `count` examples per step (all of them), or as many as
    `batch_tokens` packs when given."""
    from model.embedded import embedded_model_path
    from training.convert import hf_base_dir, load_base_model, load_tokenizer
    from training.lora import TrainSettings, completion_loss, lora_model
    from training.packing import build_pack, encode, plan_batches

    torch.set_num_threads(threads)
    hf_dir = hf_base_dir(embedded_model_path(), progress=False)
    tokenizer = load_tokenizer(hf_dir)
    settings = TrainSettings()
    encoded = encode(load_examples(count, tokenizer), tokenizer, settings.max_tokens)
    if batch_tokens:
        encoded = [encoded[i] for i in plan_batches(encoded, batch_tokens, seed=0, epoch=1)[0]]
    torch.manual_seed(0)
    model = lora_model(load_base_model(hf_dir), settings).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)

    pack = build_pack(encoded)
    padded_ids, padded_mask, labels = _padded(encoded, tokenizer.pad_token_id)
    loss_fn: Callable[[], torch.Tensor] = {
        "naive": lambda: model(input_ids=padded_ids, attention_mask=padded_mask, labels=labels).loss,
        "gathered": lambda: _gathered_loss(model, padded_ids, padded_mask, labels),
        "sentimon": lambda: completion_loss(model, pack),
    }[method]
    walls, cpus = [], []
    for step in range(steps + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        loss_fn().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up allocators and caches
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return StepRun(
        method=method,
        examples=len(encoded),
        example_tokens=pack.example_tokens,
        row_tokens=pack.input_ids.shape[1] if method == "sentimon" else padded_ids.numel(),
        loss_tokens=len(pack.targets),
        step_s=statistics.median(walls),
        cpu_s=statistics.median(cpus),
        peak_rss_mb=usage().peak_rss_mb,
    )


def _padded(encoded, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(e.tokens) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), -100)
    for row, example in enumerate(encoded):
        ids[row, : len(example.tokens)] = torch.tensor(example.tokens)
        mask[row, : len(example.tokens)] = 1
        completion = torch.tensor(example.tokens[example.prompt_len :])
        completion[torch.tensor(example.loss_weights) == 0] = -100
        labels[row, example.prompt_len : len(example.tokens)] = completion
    return ids, mask, labels


def _gathered_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    causal_lm = model.get_base_model()
    hidden = causal_lm.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    predict = targets != -100
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][predict])
    return F.cross_entropy(logits, targets[predict])


def run_benchmark(count: int, steps: int, threads: int, default_examples: int) -> BenchResult:
    from training.lora import TrainSettings

    comparison = [run_in_fresh_process(measure, method, count, steps, threads, None) for method in METHODS]
    budget = TrainSettings().batch_tokens
    default = run_in_fresh_process(measure, "sentimon", default_examples, steps, threads, budget)
    return BenchResult(machine(), os.getloadavg(), threads, steps, comparison, default)


def _rows(result: BenchResult) -> list[list[str]]:
    naive = result.comparison[0]
    return [
        [run.method, str(run.examples), str(run.example_tokens), str(run.row_tokens), str(run.loss_tokens),
         f"{run.step_s:.1f}", f"{run.tokens_per_s:.0f}", f"{run.tokens_per_s / naive.tokens_per_s:.1f}x",
         f"{run.cpu_s:.1f}", f"{run.tokens_per_cpu_s:.0f}", f"{run.tokens_per_cpu_s / naive.tokens_per_cpu_s:.1f}x",
         f"{run.peak_rss_mb:,.0f}"]
        for run in result.comparison
    ]  # fmt: skip


HEADER = ["step", "examples", "example tokens", "row tokens", "loss tokens", "wall s/step", "example tok/s",
          "vs naive", "CPU s/step", "tok/CPU-s", "vs naive (CPU)", "peak RSS MB"]  # fmt: skip


def per_thousand(run: StepRun) -> tuple[float, float]:
    """Hours of wall time for 1,000 examples like the measured ones (one epoch) as measured, and on 2 idle
    cores (the CPU time spread over both, an optimistic bound)."""
    steps = 1000 / run.examples
    return steps * run.step_s / 3600, steps * run.cpu_s / 2 / 3600


def _default_line(run: StepRun) -> str:
    measured, idle = per_thousand(run)
    return (
        f"sentimon's step at the default batch size ({run.row_tokens} row tokens): {run.examples} examples of "
        f"{run.example_tokens / run.examples:.0f} tokens per step in {run.step_s:.1f} s wall / {run.cpu_s:.1f} CPU-s, "
        f"{run.tokens_per_s:.0f} example tok/s, peak RSS {run.peak_rss_mb:,.0f} MB: {measured:.2f} h per 1,000 "
        f"examples per epoch as measured, {idle:.2f} h on 2 idle cores."
    )


def markdown(result: BenchResult) -> str:
    lines = [
        f"Machine: {result.machine.describe()}, torch threads {result.threads}, load average at the end "
        f"{' / '.join(f'{x:.1f}' for x in result.load_average)}; median of {result.steps} timed steps after one "
        "warm-up step, each method in a fresh process.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(row) + " |" for row in _rows(result)),
        "",
        _default_line(result.default_batch),
    ]
    return "\n".join(lines)


def table(result: BenchResult) -> Table:
    view = Table(title=f"LoRA step on the same {result.comparison[0].examples} examples", *HEADER)
    for row in _rows(result):
        view.add_row(*row)
    return view


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n\n")[0])
    counts = {
        "examples": (8, "examples in the compared batch"),
        "steps": (3, "timed steps per method"),
        "threads": (2, "torch threads"),
        "default_examples": (40, "examples offered to the default-batch runs"),
    }
    for name, (default, meaning) in counts.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default, help=f"{meaning} ({default})")
    parser.add_argument("--markdown", action="store_true", help="also print the result as Markdown")
    args = parser.parse_args(argv)
    for name in counts:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    console = Console()
    try:
        with console.status(f"{len(METHODS)} methods x {args.steps + 1} steps, then the default batch…"):
            result = run_benchmark(args.examples, args.steps, args.threads, args.default_examples)
    except BenchError as exc:
        console.print(f"[red]training benchmark failed:[/] {exc}")
        return 1
    console.print(table(result))
    console.print(_default_line(result.default_batch))
    if args.markdown:
        print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
