"""Model-quality benchmark: an adapter against the base model it was trained on, on the same records, in one run.

    python -m bench.quality [--adapter model/adapters/default.gguf] [--sets dev finentity] [--limit N]
                            [--json out.json] [--markdown]

Scores the embedded base model without an adapter (its few-shot prompt) and with the adapter (the short tuned
prompt) with the real analyzer, greedy and grammar-constrained as the daemon runs it, on two sets nobody trained
on: the development set `datasets/dev.jsonl` and the held-out fold of FinEntity's training split (the 20% that
`training/dataset.py` keeps out of every training set). The quality figures are deterministic (greedy decoding);
`sec_per_sample` depends on the machine's load while each ran. Targets (issue 4): on dev, perfect records > 65%,
entity F1 > 95%, polarity accuracy > 89.5%; on FinEntity, entity+polarity F1 against FinBERT-CRF's published 0.84.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress

from bench._common import machine
from model.analyzer import Analyzer
from model.evaluate import EvalRecord, evaluate, load_records
from model.settings import ModelSettings
from training.dataset import DataSources, split_finentity
from training.registry import BUNDLED_ADAPTER

METRICS = ("perfect_records", "entity_precision", "entity_recall", "entity_f1", "entity_polarity_f1",
           "polarity_accuracy", "category_accuracy", "valid_json_rate", "sec_per_sample")  # fmt: skip
TARGETS = {("dev", "perfect_records"): 0.65, ("dev", "entity_f1"): 0.95, ("dev", "polarity_accuracy"): 0.895,
           ("finentity", "entity_polarity_f1"): 0.84}  # fmt: skip


def evaluation_sets(names: Sequence[str], limit: int | None) -> dict[str, list[EvalRecord]]:
    sources = DataSources()
    loaders = {"dev": lambda: load_records(sources.dev), "finentity": lambda: list(split_finentity(sources)[1])}
    return {name: loaders[name]()[:limit] for name in names}


def score(analyzer: Analyzer, adapter: Path, sets: dict[str, list[EvalRecord]]) -> dict[str, dict[str, dict]]:
    """{set: {"base": report, "adapter": report}} as evaluate() reports them (JSON)."""
    results: dict[str, dict[str, dict]] = {}
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=Console(stderr=True)) as bar:
        for name, records in sets.items():
            results[name] = {}
            for which, path in (("base", None), ("adapter", str(adapter))):
                task = bar.add_task(f"{name}, {which}", total=len(records))
                analyzer.backend.set_adapter(path)
                report = evaluate(analyzer, records, progress=lambda done, _: bar.update(task, completed=done))
                results[name][which] = report.to_json()
    return results


def markdown(results: dict[str, dict[str, dict]]) -> str:
    """One row per metric; a column per set and model; the target where issue 4 sets one."""
    columns = [(name, which) for name in results for which in ("base", "adapter")]
    lines = ["| metric | " + " | ".join(f"{name}, {which}" for name, which in columns) + " | target |",
             "|---|" + "---|" * (len(columns) + 1)]  # fmt: skip
    for metric in METRICS:
        cells = [_cell(results[name][which].get(metric), metric) for name, which in columns]
        target = " / ".join(f"{name} > {value:.1%}" for (name, key), value in TARGETS.items() if key == metric)
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {target} |")
    counts = [f"{results[name]['base']['n_records']} {name} records" for name in results]
    return "\n".join(lines) + f"\n\n{', '.join(counts)}; {machine().describe()}"


def _cell(value: float | None, metric: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if metric == "sec_per_sample" else f"{value:.1%}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, default=BUNDLED_ADAPTER, help="GGUF LoRA adapter to score")
    parser.add_argument("--sets", nargs="+", choices=("dev", "finentity"), default=("dev", "finentity"),
                        help="which evaluation sets (default: both)")
    parser.add_argument("--limit", type=int, help="only the first N records of each set")
    parser.add_argument("--json", type=Path, help="write the reports here as well")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table (for docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if not args.adapter.is_file():
        print(f"error: no adapter file at {args.adapter}", file=sys.stderr)
        return 1
    results = score(Analyzer.from_settings(ModelSettings()), args.adapter, evaluation_sets(args.sets, args.limit))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(markdown(results) if args.markdown else json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
