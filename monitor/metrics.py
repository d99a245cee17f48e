"""Prometheus metrics for the running daemon at http://[metrics] listen/metrics. Values are read from the pipeline
when Prometheus scrapes, so the stages carry no metric code of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from monitor.config import MetricsSettings

if TYPE_CHECKING:
    from prometheus_client import Metric

    from monitor.pipeline import Pipeline

COUNTERS = {  # PipelineStats field -> help; exported as sentimon_<field>_total
    "polls": "Feed polls attempted.",
    "poll_errors": "Feed polls that failed (network, HTTP status, not a feed).",
    "stories_new": "New stories accepted from feeds.",
    "pages_stored": "Article pages fetched, extracted and stored.",
    "page_failures": "Article pages that could not be fetched or extracted (the feed text is kept).",
    "near_duplicates": "Stored pages found to be near copies of an earlier story (not analyzed).",
    "analyzed": "Analyses whose model output passed validation.",
    "analysis_failures": "Analyses whose model output failed validation after every attempt.",
    "alerts": "Sentiment-swing alerts fired.",
    "alerts_undelivered": "Alerts the webhook or command did not take.",
}


class MetricsError(Exception):
    """The metrics endpoint could not start; the message names the setting."""


class PipelineCollector(Collector):
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator[Metric]:
        stats = self.pipeline.stats
        for field, help_text in COUNTERS.items():
            yield CounterMetricFamily(f"sentimon_{field}", help_text, value=getattr(stats, field))
        depth = GaugeMetricFamily("sentimon_queue_depth", "Items waiting in each stage's queue.", labels=["stage"])
        for stage, queue in self.pipeline.queues.items():
            depth.add_metric([stage], queue.qsize())
        yield depth
        yield SummaryMetricFamily(
            "sentimon_analysis_seconds", "Model time per analyzed article, retries included.",
            count_value=stats.analyzed + stats.analysis_failures, sum_value=stats.model_seconds,
        )  # fmt: skip
        tokens = CounterMetricFamily("sentimon_model_tokens", "Tokens the model read and wrote.", labels=["kind"])
        tokens.add_metric(["prompt"], stats.prompt_tokens)
        tokens.add_metric(["completion"], stats.completion_tokens)
        yield tokens
        if stats.last_poll_ok is not None:
            yield GaugeMetricFamily("sentimon_last_successful_poll_timestamp_seconds",
                                    "When a feed last answered with a readable feed.",
                                    value=stats.last_poll_ok.timestamp())  # fmt: skip
        writer = self.pipeline.writer.stats
        yield CounterMetricFamily("sentimon_db_write_batches", "Write transactions on the database.",
                                  value=writer.batches)  # fmt: skip
        yield CounterMetricFamily("sentimon_db_held_seconds", "Time the daemon held the database file open for writes.",
                                  value=writer.held_seconds)  # fmt: skip
        yield CounterMetricFamily("sentimon_db_lock_waits", "Writes that waited for another process to free the file.",
                                  value=writer.lock_waits)  # fmt: skip
        if self.pipeline.analyzer is not None:
            backend = self.pipeline.analyzer.backend
            yield InfoMetricFamily("sentimon_model", "The model in use and its LoRA adapter (empty: none).",
                                   value={"model": backend.model_id, "adapter": backend.adapter or ""})  # fmt: skip


def collector_registry(pipeline: Pipeline) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(pipeline))
    ProcessCollector(registry=registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
    return registry


@asynccontextmanager
async def serve_metrics(pipeline: Pipeline, settings: MetricsSettings) -> AsyncIterator[None]:
    """Serve /metrics on the daemon's event loop while the context is open."""
    registry = collector_registry(pipeline)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = settings.address()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise MetricsError(f"metrics.listen {settings.listen}: cannot listen there ({exc.strerror or exc})") from None
    try:
        yield
    finally:
        await runner.cleanup()
