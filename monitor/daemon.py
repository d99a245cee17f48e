"""The daemon: builds the pipeline, schedules the polls, and stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import AsyncExitStack
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.alerts import AlertSender
from monitor.config import Config
from monitor.metrics import serve_metrics
from monitor.pipeline import Pipeline, PipelineStats, now
from monitor.polling import quiet_at_shutdown, reload_polls, schedule_polls
from scrapers.http import HttpClient
from storage.db import Database
from storage.writer import StoreWriter
from training.hotswap import adapter_watch
from training.schedule import schedule_training

if TYPE_CHECKING:
    from model.analyzer import Analyzer

log = logging.getLogger(__name__)

BACKLOG_CHECK_SECONDS = 60.0
PR_SET_PDEATHSIG = 1
WORKER_NICENESS = 10


@dataclass
class RunSummary:
    stats: PipelineStats
    interrupted: bool


async def run_daemon(
    config: Config, *, once: bool = False, analyzer: Analyzer | None = None, reload: Callable[[], Config] | None = None
) -> RunSummary:
    """Run until SIGTERM/SIGINT (or, with `once`, until every feed was polled once and all work is done).
    `reload` reads the config again; given it, SIGHUP applies a changed watchlist and feeds without a restart."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with AsyncExitStack() as stack:
            writer = await stack.enter_async_context(
                StoreWriter(Database(config.database), interval=config.pipeline.write_interval_seconds)
            )
            http = await stack.enter_async_context(HttpClient(config.http))
            cpu_pool = stack.enter_context(
                ProcessPoolExecutor(config.pipeline.extract_processes, initializer=init_worker)
            )
            model_thread = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="model"))
            alert_sender = AlertSender(config.alerts, http) if config.alerts.enabled and analyzer is not None else None
            pipeline = Pipeline(config, writer, http, cpu_pool, analyzer=analyzer, model_thread=model_thread,
                                before_analysis=adapter_watch(config, analyzer), alert_sender=alert_sender)
            if config.metrics.listen:
                await stack.enter_async_context(serve_metrics(pipeline, config.metrics))
                log.info("metrics at http://%s/metrics", config.metrics.listen)
            await pipeline.start()
            work = asyncio.create_task(_poll_once(pipeline, config) if once else _poll_forever(pipeline, config, stop, reload))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
            interrupted = stop.is_set()
            if interrupted:
                log.info("stopping: no new polls; finishing in-flight work (up to %.0fs)",
                         config.pipeline.shutdown_grace_seconds)
            work.cancel()
            stopped.cancel()
            await asyncio.gather(work, stopped, return_exceptions=True)
            await pipeline.stop(config.pipeline.shutdown_grace_seconds)
            return RunSummary(pipeline.stats, interrupted)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def init_worker() -> None:
    """Extraction-process initializer: a lower priority keeps the event loop responsive while both cores extract
    (measured: loop-lag p99 183 -> 48 ms at the same throughput), and the worker dies with the daemon."""
    os.nice(WORKER_NICENESS)
    die_with_parent()


def die_with_parent() -> None:
    """If the daemon is killed (kill -9, OOM), this child process goes too instead of lingering as an orphan
    (Linux; elsewhere a service manager's process-group kill does it)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def _poll_once(pipeline: Pipeline, config: Config) -> None:
    await pipeline.load_backlog()
    await asyncio.gather(*(pipeline.poll(url, tickers) for url, tickers in config.feeds()))
    await pipeline.drain()


async def _poll_forever(
    pipeline: Pipeline, config: Config, stop: asyncio.Event, reload: Callable[[], Config] | None
) -> None:
    """Each feed on its own jittered interval; SIGHUP re-reads the config and follows its watchlist and feeds."""
    scheduler = AsyncIOScheduler(timezone="UTC")
    schedule_polls(scheduler, pipeline, config)
    scheduler.add_job(
        quiet_at_shutdown(pipeline.load_backlog), IntervalTrigger(seconds=BACKLOG_CHECK_SECONDS), id="backlog",
        next_run_time=now(), max_instances=1, coalesce=True,
    )
    if config.training.enabled and pipeline.analyzer is not None:
        schedule_training(scheduler, config, pipeline.writer)
    scheduler.start()
    running = config
    loop = asyncio.get_running_loop()
    if reload is not None:

        def on_hangup() -> None:
            nonlocal running
            running = reload_polls(scheduler, pipeline, running, reload)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        scheduler.shutdown(wait=False)

