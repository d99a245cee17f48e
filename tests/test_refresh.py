"""The training loop end to end on a tiny dataset: the refresh job trains a real adapter (one step, rank 2),
exports it, scores it and the model in use with the real analyzer, and decides; the daemon's analyze stage
switches adapters between two articles; the schedule runs the job in a child process.

The refresh runs once per module (about a minute or two on 2 cores); the tests read what it left."""

import asyncio
import fcntl
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest
import tomli_w
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from typer.testing import CliRunner

from model.analyzer import Analyzer
from model.backends.llama_cpp import LlamaCppBackend
from model.settings import ModelSettings
from monitor.cli import app
from monitor.config import Config, PipelineSettings, TrainingSettings
from monitor.pipeline import AnalysisJob, Pipeline
from scrapers.canonical import canonical_url
from scrapers.feeds import FeedItem
from scrapers.http import HttpClient
from storage import reviews, writes
from storage.db import Database
from storage.writer import StoreWriter
from training.dataset import DataSources
from training.hotswap import adapter_watch
from training.refresh import RefreshError, RefreshOptions, refresh
from training.registry import ADAPTER_FILE, beats, registry_for
from training.review import import_reviews
from training import stack
from training.schedule import schedule_training, train_if_due

DATASETS = Path(__file__).parents[1] / "datasets"
TINY_LORA = {"rank": 2, "alpha": 4, "epochs": 1, "batch_tokens": 2048, "learning_rate": 1e-3, "warmup_ratio": 0}
REVIEWED = {"id": "news-ford", "text": "Ford recalls 1,000 trucks over a brake defect",
            "extractions": [{"entity": "Ford", "polarity": "-", "category": "Legal"}]}  # fmt: skip


def jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def first_records(path: Path, count: int, shortest: bool = False) -> list[dict]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return sorted(records, key=lambda r: len(r["text"]))[:count] if shortest else records[:count]


def config_for(root: Path, **training) -> Config:
    return Config(
        database=root / "s.duckdb",
        pipeline=PipelineSettings(write_interval_seconds=0.05),
        model=ModelSettings(max_output_tokens=64),  # bounds the time a barely trained adapter may ramble
        training=TrainingSettings(adapters_dir=root / "adapters", datasets_dir=root / "datasets", nice=0,
                                  lora=TINY_LORA, **training),
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Config:
    """Four team records, ten FinEntity records (about two held out), two short dev records, one review."""
    root = tmp_path_factory.mktemp("refresh")
    sources = DataSources.in_folder(root / "datasets")
    jsonl(sources.team, first_records(DATASETS / "train" / "team.jsonl", 4))
    jsonl(sources.finentity, first_records(DATASETS / "finentity" / "train.jsonl", 10))
    jsonl(sources.dev, first_records(DATASETS / "dev.jsonl", 2, shortest=True))
    config = config_for(root)
    with Database(config.database).write():
        pass
    assert import_reviews(Database(config.database), jsonl(root / "reviewed.jsonl", [REVIEWED]), reviewer="t") == (1, 0)
    return config


@pytest.fixture(scope="module")
def refreshed(tiny):
    return refresh(tiny, RefreshOptions(progress=False, finentity_limit=1))


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.from_settings(ModelSettings())


def test_refresh_trains_scores_and_decides(tiny, refreshed) -> None:
    config = tiny
    registry = registry_for(config)
    manifest = registry.manifest("v001")
    assert refreshed.version == "v001" and manifest.decision == refreshed.decision
    promoted = beats(manifest.metrics, manifest.baseline["metrics"])
    assert refreshed.decision == ("promoted" if promoted else "rejected"), refreshed.summary
    assert registry.current_label() == ("v001" if promoted else "bundled")  # a fresh registry starts on the shipped one
    assert manifest.baseline["version"] == "bundled" and manifest.metrics["n_records"] == 2
    assert manifest.finentity_metrics["n_records"] == 1
    assert manifest.examples["review"] == 1 and manifest.examples["team"] == 4 and manifest.examples["finentity"] >= 6
    with Database(config.database).read() as conn:
        assert manifest.reviews_through == conn.execute("SELECT max(id) FROM reviews").fetchone()[0]
    assert manifest.steps_done == manifest.total_steps == 1 and manifest.train_seconds > 0
    assert manifest.train_settings["rank"] == 2 and manifest.base_model_sha256

    # Nothing changed: the next run sees it without training.
    again = refresh(config, RefreshOptions(progress=False))
    assert (again.decision, again.version) == ("unchanged", "v001")
    assert [m.version for m in registry.versions()] == ["v001"]


def stored_story(conn, number: int, text: str) -> AnalysisJob:
    url = f"https://news.example.com/swap-{number}"
    item = FeedItem(url, canonical_url(url), None, text, "", datetime.now(UTC), (), "http://feeds/x")
    (ref,) = writes.accept_items(conn, [item], datetime.now(UTC))
    version = writes.store_page(conn, ref.id, datetime.now(UTC), final_url=url, title=None, body=text, author=None,
                                published_at=None, simhash=None, duplicate_of=None)  # fmt: skip
    return AnalysisJob(ref, version, None, text)


class HeldAnalyzer(Analyzer):
    """The real analyzer, which can be held at the start of an analysis to change adapters mid-article."""

    def __init__(self, inner: Analyzer) -> None:
        super().__init__(inner.backend, inner.link, max_input_tokens=inner.max_input_tokens,
                         max_output_tokens=inner.max_output_tokens)  # fmt: skip
        self.started, self.go = threading.Event(), threading.Event()

    def analyze(self, text, **kwargs):
        self.started.set()
        self.go.wait()
        return super().analyze(text, **kwargs)


async def test_the_analyze_stage_switches_adapters_between_articles(tiny, refreshed, analyzer, tmp_path,
                                                                    fast_settings) -> None:  # fmt: skip
    registry = registry_for(tiny)
    if registry.current_label() != "base":
        registry.rollback("base")
    config = config_for(tmp_path).model_copy(update={"training": tiny.training})
    held = HeldAnalyzer(analyzer)
    texts = ["Peloton shares soar 20% as cost cuts deliver surprise profit",
             "Intel cuts 15% of its workforce after a loss", "Pfizer wins FDA approval for a new RSV vaccine"]  # fmt: skip
    async with StoreWriter(Database(config.database), interval=0.05) as writer, HttpClient(fast_settings) as http:
        with ThreadPoolExecutor(1) as cpu, ThreadPoolExecutor(1, thread_name_prefix="model") as model_thread:
            pipeline = Pipeline(config, writer, http, cpu, analyzer=held, model_thread=model_thread,
                                before_analysis=adapter_watch(config, held))  # fmt: skip
            await pipeline.start()
            jobs = [await writer.submit(partial(stored_story, number=i, text=t)) for i, t in enumerate(texts)]

            await pipeline.analyze_queue.put(jobs[0])  # in flight on the base model ...
            assert await asyncio.to_thread(held.started.wait, 600), "the analyze stage never started the article"
            registry.rollback("v001")  # ... when v001 is put in use
            held.go.set()
            await asyncio.wait_for(pipeline.drain(), 600)
            await pipeline.analyze_queue.put(jobs[1])  # the next article runs on v001
            await asyncio.wait_for(pipeline.drain(), 600)
            registry.rollback("base")
            await pipeline.analyze_queue.put(jobs[2])
            await asyncio.wait_for(pipeline.drain(), 600)
            await pipeline.stop(grace=5)
    with Database(config.database).read() as conn:
        recorded = conn.execute("SELECT story_id, adapter FROM analyses ORDER BY story_id").fetchall()
    v001 = str(registry.root / "v001" / ADAPTER_FILE)
    assert recorded == [(jobs[0].story.id, None), (jobs[1].story.id, v001), (jobs[2].story.id, None)]
    assert analyzer.backend.adapter is None and isinstance(analyzer.backend, LlamaCppBackend)


async def test_schedule_runs_the_refresh_in_a_child_process_when_due(tiny, refreshed) -> None:
    config = tiny
    due = config.model_copy(update={"training": config.training.model_copy(update={"min_new_reviews": 1})})
    async with StoreWriter(Database(config.database), interval=0.05) as writer:
        assert await train_if_due(due, writer) is None, "no review since v001's data"

        def review_again(conn):  # the reviewer confirms the same label: one new review, the same training data
            (example,) = reviews.reviewed_examples(conn)
            return reviews.store_review(conn, reviews.Review(example.record_id, example.text, example.extractions,
                                                             "accepted", "t"), datetime.now(UTC))  # fmt: skip

        await writer.submit(review_again)
        outcome = await train_if_due(due, writer)  # a child process, which finds v001 made from the same data
    assert outcome is not None and (outcome["decision"], outcome["version"]) == ("unchanged", "v001"), outcome


def test_schedule_is_a_single_instance_cron_job() -> None:
    scheduler = AsyncIOScheduler(timezone="UTC")
    config = Config(training=TrainingSettings(schedule="30 2 * * mon-fri", misfire_grace_seconds=600))
    schedule_training(scheduler, config, writer=None)
    (job,) = scheduler.get_jobs()
    assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 600)
    fields = {f.name: str(f) for f in job.trigger.fields}
    assert (fields["minute"], fields["hour"], fields["day_of_week"]) == ("30", "2", "mon-fri")
    remote = AsyncIOScheduler(timezone="UTC")
    schedule_training(remote, config.model_copy(update={"model": ModelSettings(backend="openai")}), writer=None)
    assert remote.get_jobs() == [], "a server backend loads no GGUF adapters: nothing to train for"


def test_refresh_refuses_what_it_cannot_train(tmp_path: Path) -> None:
    with pytest.raises(RefreshError, match=r'training starts from a GGUF base model, .* \(backend "openai"\)'):
        refresh(Config(model=ModelSettings(backend="openai")))
    with pytest.raises(RefreshError, match=r"training.lora in the configuration: rank: Input should be greater"):
        refresh(config_for(tmp_path).model_copy(update={"training": TrainingSettings(lora={"rank": 0})}))
    locked = config_for(tmp_path)
    locked.training.adapters_dir.mkdir(parents=True)
    with (locked.training.adapters_dir / "training.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a training already running on this registry
        with pytest.raises(RefreshError, match="another training is running"):
            refresh(locked)
    config = tmp_path / "sentimon.toml"
    config.write_text(tomli_w.dumps({"database": str(tmp_path / "s.duckdb"), "training": {"lora": {"ranks": 4}}}))
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 1 and "ranks: Extra inputs are not permitted" in result.output


def test_merge_makes_a_scored_version_and_names_what_it_cannot_average(tiny, refreshed, tmp_path) -> None:
    config_file = tmp_path / "sentimon.toml"
    config_file.write_text(tomli_w.dumps(tiny.model_dump(mode="json", exclude_none=True)))
    registry = registry_for(tiny)
    registry.rollback("v001")  # scored on the development set when it was trained
    in_use = registry.current_label()
    runner = CliRunner(env={"COLUMNS": "200"})
    merged = runner.invoke(app, ["adapters", "merge", "bundled", "v001", "--rank", "8", "--no-promote",
                                 "--config", str(config_file)])  # fmt: skip
    assert merged.exit_code == 0, merged.output
    [manifest] = [m for m in registry.versions() if m.merged_from]
    assert manifest.merged_from == ["bundled", "v001"] and manifest.metrics["n_records"] == 2
    assert manifest.train_settings["rank"] == 8 and 0 < manifest.train_settings["energy_kept"] < 1
    assert manifest.baseline["version"] == in_use and manifest.decision in ("pending", "rejected")
    assert manifest.baseline["metrics"] == registry.manifest("v001").metrics, "v001 was not scored again (same timing)"
    assert registry.current_label() == in_use, "--no-promote leaves the adapter in use alone"
    assert manifest.reviews_through == registry.manifest("v001").reviews_through
    assert "mean of 2" in runner.invoke(app, ["adapters", "list", "--config", str(config_file)]).output

    folders = sorted(path.name for path in registry.root.glob("v*"))
    for sources, problem in ((["base", "v001"], "the base model has no adapter to average"),
                             (["v001", "nothing.gguf"], "nothing.gguf: neither a version label"),
                             (["v001", str(config_file)], "sentimon.toml: not a readable GGUF file")):  # fmt: skip
        failed = runner.invoke(app, ["adapters", "merge", *sources, "--config", str(config_file)])
        assert failed.exit_code == 1 and problem in failed.output, failed.output
    assert sorted(path.name for path in registry.root.glob("v*")) == folders, "a failed merge leaves no version"


def test_without_the_training_extras_train_and_the_schedule_say_what_to_install(monkeypatch, caplog) -> None:
    monkeypatch.setattr(stack, "TRAINING_PACKAGES", (*stack.TRAINING_PACKAGES, "sentimon_absent_package"))
    done = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["train", "--steps", "1"])
    assert done.exit_code == 1
    assert "training needs sentimon_absent_package, not installed: pip install 'sentimon[train]'" in done.output
    scheduler = AsyncIOScheduler(timezone="UTC")
    schedule_training(scheduler, Config(), writer=None)
    assert scheduler.get_jobs() == [] and "sentimon_absent_package, not installed" in caplog.text
