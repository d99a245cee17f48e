"""The refresh job: train a candidate adapter, score it on the development set, promote it if it wins.

    python -m training.refresh [--config FILE] [--steps N] [--epochs N] [--no-promote] [--out DIR] [--force]

1. Assemble the training data (training/dataset.py): reviewed extractions from the database, the team-written
   set, the FinEntity training fold. The same data, base model and settings as a version already trained: done.
2. Train a LoRA adapter (training/lora.py) in `--out` (default <adapters_dir>/runs/<data hash>); a rerun on the
   same data resumes from its last checkpoint.
3. Export it for llama.cpp into a new registry version vNNN/ (training/export.py, training/registry.py).
4. Score the adapter in use (or the base model) and the candidate on the development set with the real analyzer,
   and the candidate on the held-out FinEntity fold; promote the candidate only if it has the higher entity F1
   and no lower valid-JSON rate. A running daemon switches to it before its next article. Scores are kept in
   <adapters_dir>/scores/ by what decides them (training/score_cache.py): the adapter in use, scored when it was
   a candidate, is not scored again.

`merge` (`sentimon adapters merge`) makes a candidate by averaging adapters instead (training/merge.py) and
decides on it the same way.

One training runs per registry at a time. The process lowers its own priority first (training.nice), so
ingestion keeps the CPU it needs. `sentimon train` runs this in the foreground with progress bars; the daemon's
schedule runs `--background` (no bars, dies with the daemon, its outcome printed as one JSON line).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.progress import MofNCompleteColumn, Progress

from model.analyzer import Analyzer
from model.embedded import resolve_model_path, sha256_file
from model.evaluate import EvalRecord, evaluate, load_records
from model.settings import ModelSettings
from monitor.config import Config, ConfigError, load_config
from storage import reviews
from storage.db import Database
from training.dataset import DataSources, TrainingSet, assemble
from training.adapter_file import AdapterFileError
from training.export import export_gguf_adapter
from training.lora import TrainSettings, settings_problems
from training.merge import MergeError, merge_adapters
from training.registry import (
    ADAPTER_FILE, BASE, BUNDLED, VERSION_LABEL, AdapterRegistry, Manifest, beats, registry_for,
)  # fmt: skip
from training.review import ensure_schema
from training.score_cache import cached_scores, score_key
from training.stack import untrainable_model
from training.trainers import run_trainer

log = logging.getLogger("sentimon.training")
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOCK_FILE = "training.lock"
# Settings that change neither what is learned nor how far: a version trained with other values is the same run.
_RUN_INDEPENDENT = {"threads", "nice", "checkpoint_every", "max_steps"}


class RefreshError(RuntimeError):
    """The refresh can't run as configured; the message says what to change."""


@dataclass(frozen=True)
class RefreshOptions:
    steps: int | None = None  # stop training after this many steps (a rerun on the same data resumes)
    epochs: int | None = None  # instead of training.lora's epochs
    promote: bool = True  # False: evaluate and record, but leave the adapter in use alone
    run_dir: Path | None = None
    eval_limit: int | None = None  # development-set records scored (default: training.eval_limit, else all)
    finentity_limit: int | None = None  # held-out FinEntity records scored (default: all)
    force: bool = False  # train even if a version was trained on the same data and settings
    progress: bool = True


@dataclass(frozen=True)
class RefreshOutcome:
    decision: str  # promoted, rejected, pending (won but --no-promote) or unchanged (nothing to train)
    version: str | None
    summary: str
    metrics: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def scoring_analyzer(settings: ModelSettings) -> Analyzer:
    """The base GGUF in llama.cpp, whichever backend the daemon runs: the registry's adapters are GGUF files, and
    promotion compares them as llama.cpp runs them."""
    return Analyzer.from_settings(settings.model_copy(update={"adapter": None, "backend": "llama_cpp"}))


def refresh(config: Config, options: RefreshOptions = RefreshOptions()) -> RefreshOutcome:
    """Run the whole job in this process, which it makes lower-priority for good (os.nice)."""
    if problem := untrainable_model(config.model):
        raise RefreshError(problem)
    settings = train_settings(config, options)
    registry = registry_for(config)
    with _only_training(registry.root, config.training.nice):
        return _refresh(config, options, settings, registry)


def _refresh(
    config: Config, options: RefreshOptions, settings: TrainSettings, registry: AdapterRegistry
) -> RefreshOutcome:
    sources = DataSources.in_folder(config.training.datasets_dir)
    base = resolve_model_path(config.model)
    base_sha = sha256_file(base)
    analyzer = scoring_analyzer(config.model)
    data = training_data(config, analyzer, sources)
    log.info("training data %s: %s examples, %s left out", data.data_hash[:12], data.counts(), data.dropped or "none")
    done = _trained_before(registry, data.data_hash, base_sha, settings)
    if done and not options.force:
        return RefreshOutcome("unchanged", done.version, f"{done.version} was trained on the same data and settings; "
                              "nothing to do (--force trains again)")  # fmt: skip

    result = run_trainer(config.training.trainer, data.examples, base_gguf=base, settings=settings,
                         out_dir=_run_dir(registry, data.data_hash, options), progress=options.progress)  # fmt: skip
    label = registry.reserve()
    export_gguf_adapter(result.adapter_dir, base, registry.root / label / ADAPTER_FILE)
    manifest = Manifest(
        version=label, created_at=datetime.now(UTC), data_hash=data.data_hash, base_model=base.name,
        base_model_sha256=base_sha, train_settings=settings.model_dump(mode="json"), examples=data.counts(),
        reviews_through=data.review_watermark, steps_done=result.steps_done, total_steps=result.total_steps,
        train_seconds=round(result.seconds, 1),
    )  # fmt: skip
    registry.save(manifest)  # on record before the evaluation, so a failure there leaves a visible candidate
    log.info("trained %s: %d/%d steps, last loss %.4f", label, result.steps_done, result.total_steps, result.losses[-1])
    return _decide(registry, manifest, analyzer, data.finentity_holdout, config, options, sources)


def merge(
    config: Config, sources: Sequence[str], options: RefreshOptions = RefreshOptions(), *, rank: int | None = None
) -> RefreshOutcome:
    """Average adapters (registry versions, "bundled", or adapter files of the same base model) into a new version
    (training/merge.py; at most `rank` wide if given), then score it and promote it if it wins, as a trained
    candidate would be."""
    if problem := untrainable_model(config.model):
        raise RefreshError(problem)
    registry = registry_for(config)
    base = resolve_model_path(config.model)
    base_sha = sha256_file(base)
    parts = [_merge_part(registry, source, base_sha) for source in sources]
    with _only_training(registry.root, config.training.nice):  # scoring takes the CPU for minutes
        label = registry.reserve()
        try:
            merged = merge_adapters([path for path, _ in parts], registry.root / label / ADAPTER_FILE, rank=rank)
        except (MergeError, AdapterFileError):
            (registry.root / label).rmdir()
            raise
        log.info("averaged %s into %s: rank %d, %.2f%% of each mean update's energy kept at least", ", ".join(sources),
                 label, merged.rank, 100 * merged.energy_kept)  # fmt: skip
        manifest = Manifest(
            version=label, created_at=datetime.now(UTC), data_hash=_merged_hash(parts), base_model=base.name,
            base_model_sha256=base_sha, examples={}, steps_done=0, total_steps=0,
            train_settings={"rank": merged.rank, "energy_kept": round(merged.energy_kept, 6)},
            reviews_through=max((m.reviews_through for _, m in parts if m), default=0),
            merged_from=[source if known else str(path) for source, (path, known) in zip(sources, parts)],
        )  # fmt: skip
        registry.save(manifest)
        analyzer = scoring_analyzer(config.model)
        sources_dir = DataSources.in_folder(config.training.datasets_dir)
        return _decide(registry, manifest, analyzer, (), config, options, sources_dir)


def _merge_part(registry: AdapterRegistry, source: str, base_sha: str) -> tuple[Path, Manifest | None]:
    """The adapter file a merge source names, with its manifest when it is a registry version or the bundled one."""
    if source == BASE:
        raise RefreshError("the base model has no adapter to average")
    if source == BUNDLED or VERSION_LABEL.match(source):
        adapter = registry.resolve(source)
        manifest = registry.bundled_manifest() if source == BUNDLED else registry.manifest(source)
        if manifest is not None and manifest.base_model_sha256 != base_sha:
            raise RefreshError(f"{source} was trained on another base model than the configured one")
        return adapter.path, manifest
    path = Path(source).absolute()
    if not path.is_file():
        raise RefreshError(f"{source}: neither a version label (v003, bundled) nor an adapter file")
    return path, None


def _merged_hash(parts: Sequence[tuple[Path, Manifest | None]]) -> str:
    hashes = sorted(manifest.data_hash if manifest else sha256_file(path) for path, manifest in parts)
    return hashlib.sha256(("merge:" + ",".join(hashes)).encode()).hexdigest()


@contextlib.contextmanager
def _only_training(root: Path, nice: int) -> Iterator[None]:
    """One training per registry at a time: a second one (the schedule while `sentimon train` runs) stops at once.
    The lock goes with the process, however it ends. The holder lowers its own priority by `nice`, for good."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RefreshError(f"another training is running on {root}; try again when it is done") from None
        os.nice(nice)
        yield


def _run_dir(registry: AdapterRegistry, data_hash: str, options: RefreshOptions) -> Path:
    """Where training keeps checkpoints: one folder per training set, so a rerun on the same data resumes where
    the last one stopped; --force starts afresh."""
    if options.run_dir is not None:
        return options.run_dir
    fresh = datetime.now(UTC).strftime("-%Y%m%dT%H%M%S") if options.force else ""
    return registry.root / "runs" / f"{data_hash[:16]}{fresh}"


def train_settings(config: Config, options: RefreshOptions) -> TrainSettings:
    overrides: dict[str, Any] = {"nice": 0, "max_steps": options.steps}  # the process is niced already
    if options.epochs is not None:
        overrides["epochs"] = options.epochs
    try:
        return TrainSettings.model_validate({**config.training.lora, **overrides})
    except ValidationError as exc:
        raise RefreshError(f"training.lora in the configuration: {settings_problems(exc)}") from None


def training_data(config: Config, analyzer: Analyzer, sources: DataSources) -> TrainingSet:
    """The training set with the database's reviews."""
    reviewed: list[reviews.ReviewedExample] = []
    if config.database.exists():
        database = Database(config.database)
        ensure_schema(database)
        with database.read() as conn:
            reviewed = reviews.reviewed_examples(conn)
    return assemble_for(analyzer, sources, reviewed, max_input_tokens=config.model.max_input_tokens)


def assemble_for(
    analyzer: Analyzer, sources: DataSources, reviewed: Sequence[reviews.ReviewedExample], *, max_input_tokens: int
) -> TrainingSet:
    """The training set, its prompts built with the inference backend's own tokenizer and chat template."""
    backend = analyzer.backend
    return assemble(
        count_tokens=backend.count_tokens, reviewed=reviewed, sources=sources,
        template=getattr(backend, "chat_template", None), max_input_tokens=max_input_tokens,
    )  # fmt: skip


def _trained_before(
    registry: AdapterRegistry, data_hash: str, base_sha: str, settings: TrainSettings
) -> Manifest | None:
    wanted = settings.model_dump(mode="json", exclude=_RUN_INDEPENDENT)
    for manifest in reversed(registry.versions()):
        same_settings = {k: v for k, v in manifest.train_settings.items() if k not in _RUN_INDEPENDENT} == wanted
        finished = manifest.steps_done == manifest.total_steps
        if manifest.data_hash == data_hash and manifest.base_model_sha256 == base_sha and same_settings and finished:
            return manifest
    return None


def _decide(
    registry: AdapterRegistry, manifest: Manifest, analyzer: Analyzer, finentity_holdout: Sequence[EvalRecord],
    config: Config, options: RefreshOptions, sources: DataSources,
) -> RefreshOutcome:  # fmt: skip
    label = manifest.version
    dev = load_records(sources.dev)[: options.eval_limit or config.training.eval_limit]
    baseline_label = registry.current_label()
    baseline_adapter = registry.resolve(baseline_label)
    candidate = registry.root / label / ADAPTER_FILE

    def dev_scores(version: str, adapter: Path | None) -> dict[str, Any]:
        what = f"scoring {version} on the development set"
        key = score_key(adapter, manifest.base_model_sha256, dev, config.model)
        score = partial(score_with, analyzer, adapter, dev, what, options.progress)
        return cached_scores(registry.root, key, what, score)

    baseline = dev_scores(baseline_label, baseline_adapter.path if baseline_adapter else None)
    metrics = dev_scores(label, candidate)
    finentity = None
    if held_out := finentity_holdout[: options.finentity_limit]:
        what = f"scoring {label} on held-out FinEntity"
        finentity = score_with(analyzer, candidate, held_out, what, options.progress)
    registry.save(manifest.model_copy(update={"metrics": metrics, "finentity_metrics": finentity,
                                              "baseline": {"version": baseline_label, "metrics": baseline}}))

    comparison = (
        f"entity F1 {_percent(metrics['entity_f1'])} vs {_percent(baseline['entity_f1'])} for {baseline_label}, "
        f"valid JSON {_percent(metrics['valid_json_rate'])} vs {_percent(baseline['valid_json_rate'])} "
        f"on {len(dev)} development records"
    )
    if not beats(metrics, baseline):
        registry.reject(label, f"does not beat {baseline_label}: {comparison}")
        decision, summary = "rejected", f"{label} rejected: {comparison}"
    elif options.promote:
        registry.promote(label, f"beat {baseline_label}: {comparison}")
        decision, summary = "promoted", f"{label} promoted: {comparison}"
    else:
        decision, summary = "pending", f"{label} would win but was not promoted (--no-promote): {comparison}"
    return RefreshOutcome(decision, label, summary, metrics, baseline)


def score_with(
    analyzer: Analyzer, adapter: Path | None, records: Sequence[EvalRecord], what: str, show: bool
) -> dict[str, Any]:
    analyzer.backend.set_adapter(str(adapter) if adapter else None)
    return score_records(analyzer, records, what, show)


def score_records(analyzer: Analyzer, records: Sequence[EvalRecord], what: str, show: bool) -> dict[str, Any]:
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), disable=not show) as bar:
        task = bar.add_task(what, total=len(records))
        report = evaluate(analyzer, records, progress=lambda done, _: bar.update(task, completed=done))
    return report.to_json()


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.refresh", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, help="sentimon TOML config (default: as `sentimon` finds it)")
    source.add_argument("--config-json", type=Path, help="a configuration as JSON (what the daemon passes)")
    parser.add_argument("--steps", type=int, help="stop after this many training steps (a rerun resumes)")
    parser.add_argument("--epochs", type=int, help="passes over the data, instead of training.lora's")
    parser.add_argument("--no-promote", dest="promote", action="store_false", help="score only; change nothing in use")
    parser.add_argument("--out", type=Path, help="training run directory (checkpoints, log, peft adapter)")
    parser.add_argument("--eval-limit", type=int, help="development records to score (default: all)")
    parser.add_argument("--finentity-limit", type=int, help="held-out FinEntity records to score (default: all)")
    parser.add_argument("--force", action="store_true", help="train even if nothing changed since the last version")
    parser.add_argument("--background", action="store_true", help="no progress bars; die with the parent process")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    try:
        if args.background:
            from monitor.daemon import die_with_parent

            die_with_parent()
        if args.config_json:
            config = Config.model_validate_json(args.config_json.read_text(encoding="utf-8"))
        else:
            config = load_config(args.config)
        options = RefreshOptions(args.steps, args.epochs, args.promote, args.out, args.eval_limit,
                                 args.finentity_limit, args.force, progress=not args.background)  # fmt: skip
        outcome = refresh(config, options)
    except (ConfigError, OSError, ValueError, RuntimeError) as exc:  # each of these says what is wrong
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(outcome.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
