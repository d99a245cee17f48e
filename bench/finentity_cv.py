"""FinEntity cross-validation: the default training recipe scored on each fifth of FinEntity's training split.

    python -m bench.finentity_cv [--folds 0 1 2 3 4] [--out bench-runs/finentity-cv] [--steps N] [--limit N]
                                 [--markdown]

`sentimon train` keeps one fifth of FinEntity's training split (fold 0: the records whose seeded id hash falls in
the first fifth, training/dataset.py) out of every training set and scores it. Fold k here trains on the team set
and the other four fifths with the TrainSettings defaults (no reviews), exports the adapter for llama.cpp and
scores fold k with the real analyzer. For fold 0 the shipped adapter is scored instead when its manifest's data
hash is that fold's: it was trained on exactly that data. Each fold keeps its run in OUT/fold-k (checkpoints: an
interrupted fold resumes) and its scores in OUT/fold-k/metrics.json (a fold trained to the end is not redone).

The pooled entity+polarity F1 counts every scored record once, predicted by the one model that did not train on
it: the figure to compare with FinBERT-CRF's published 0.84. Each fold is a full training run: about 80 minutes
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._common import machine
from model.analyzer import Analyzer
from model.embedded import resolve_model_path
from model.settings import ModelSettings
from training.dataset import DataSources, TrainingSet
from training.export import export_gguf_adapter
from training.lora import TrainSettings, train_lora
from training.refresh import assemble_for, score_records
from training.registry import ADAPTER_FILE, BUNDLED_ADAPTER, AdapterRegistry

FOLDS = range(round(1 / DataSources.holdout_fraction))
METRICS_FILE = "metrics.json"
FINBERT_CRF = 0.84


def fold_data(analyzer: Analyzer, fold: int) -> TrainingSet:
    """The training set `sentimon train` would build with FinEntity fold `fold` held out (no reviews)."""
    sources = dataclasses.replace(DataSources(), holdout_fold=fold)
    return assemble_for(analyzer, sources, (), max_input_tokens=ModelSettings().max_input_tokens)


def run_fold(analyzer: Analyzer, fold: int, out: Path, *, steps: int | None, limit: int | None) -> dict[str, Any]:
    """Train (or reuse) fold `fold`'s adapter and score its held-out records; the record written to metrics.json."""
    run_dir = out / f"fold-{fold}"
    saved = run_dir / METRICS_FILE
    if saved.is_file() and (done := json.loads(saved.read_text(encoding="utf-8")))["finished"] and limit is None:
        return done
    data = fold_data(analyzer, fold)
    shipped = AdapterRegistry(out).bundled_manifest() if fold == 0 else None
    if shipped is not None and shipped.data_hash == data.data_hash:
        adapter, finished, train_seconds = BUNDLED_ADAPTER, True, shipped.train_seconds
    else:
        settings = TrainSettings(max_steps=steps)
        base = resolve_model_path(ModelSettings())
        result = train_lora(data.examples, base_gguf=base, out_dir=run_dir, settings=settings)
        adapter = export_gguf_adapter(result.adapter_dir, base, run_dir / ADAPTER_FILE)
        finished, train_seconds = result.steps_done == result.total_steps, round(result.seconds, 1)
    analyzer.backend.set_adapter(str(adapter))
    held_out = data.finentity_holdout[:limit]
    report = score_records(analyzer, held_out, f"fold {fold}: scoring {len(held_out)} held-out records", True)
    record = {"fold": fold, "adapter": str(adapter), "data_hash": data.data_hash, "examples": data.counts(),
              "finished": finished and limit is None, "train_seconds": train_seconds, "report": report}  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)  # not made by training when fold 0 reuses the shipped adapter
    saved.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


def pooled_f1(records: Sequence[dict[str, Any]]) -> float:
    """Entity+polarity F1 over the union of the folds' records: 2·(right polarity on a matched entity) over
    gold + predicted entities, summed across folds."""
    reports = [r["report"] for r in records]
    right = sum(row.get(gold, 0) for report in reports for gold, row in report["polarity_confusion"].items())
    entities = sum(report["n_gold_entities"] + report["n_predicted_entities"] for report in reports)
    return 2 * right / entities


def markdown(records: Sequence[dict[str, Any]]) -> str:
    lines = ["| fold | records | entity F1 | entity+polarity F1 | polarity acc. | adapter | training |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        report, minutes = r["report"], (r["train_seconds"] or 0) / 60
        lines.append(f"| {r['fold']} | {report['n_records']} | {report['entity_f1']:.1%} | "
                     f"{report['entity_polarity_f1']:.1%} | {report['polarity_accuracy']:.1%} | "
                     f"{Path(r['adapter']).name} | {minutes:.0f} min |")  # fmt: skip
    n = sum(r["report"]["n_records"] for r in records)
    lines.append(f"| **pooled** | {n} | | **{pooled_f1(records):.1%}** | | | FinBERT-CRF: {FINBERT_CRF:.0%} |")
    return "\n".join(lines) + f"\n\n{machine().describe()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.finentity_cv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", choices=FOLDS, default=list(FOLDS), help="folds to run")
    parser.add_argument("--out", type=Path, default=Path("bench-runs/finentity-cv"), help="where runs are kept")
    parser.add_argument("--steps", type=int, help="stop each training after this many steps (a rerun resumes)")
    parser.add_argument("--limit", type=int, help="score only the first N held-out records of each fold")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table (for docs/benchmarks.md)")
    args = parser.parse_args(argv)
    analyzer = Analyzer.from_settings(ModelSettings())
    with contextlib.redirect_stdout(sys.stderr):  # progress bars on stderr: stdout is the result
        records = [run_fold(analyzer, fold, args.out, steps=args.steps, limit=args.limit) for fold in args.folds]
    summary = {"folds": records, "pooled_entity_polarity_f1": round(pooled_f1(records), 4)}
    print(markdown(records) if args.markdown else json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
