"""The poll schedule: one APScheduler job per feed, and its update when the config is reloaded (SIGHUP)."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.config import Config, ConfigError
from monitor.pipeline import Pipeline, now

log = logging.getLogger(__name__)

FIRST_POLL_SPREAD_SECONDS = 30.0  # first polls start within this window: data comes in right away, without a burst
POLL_JOB_PREFIX = "poll:"
# What a reload changes in the running daemon; any other key takes effect at the next start.
RELOADED_KEYS = ("watchlist", "feed_url", "batch_size", "extra_feeds", "poll_interval_seconds", "poll_jitter")

P = ParamSpec("P")
T = TypeVar("T")


def quiet_at_shutdown(job: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T | None]]:
    """A scheduled coroutine that the scheduler's shutdown cancels ends without an error; APScheduler would log the
    CancelledError with a traceback, as if the job had failed."""

    @functools.wraps(job)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T | None:
        try:
            return await job(*args, **kwargs)
        except asyncio.CancelledError:
            log.info("%s stopped: the daemon is shutting down", job.__name__)
            return None

    return run


def schedule_polls(scheduler: BaseScheduler, pipeline: Pipeline, config: Config) -> None:
    """A job for every feed of `config` that has none yet; their first polls are spread over a short window."""
    interval = config.poll_interval_seconds
    scheduled = {job.id for job in scheduler.get_jobs()}
    feeds = [(url, tickers) for url, tickers in config.feeds() if POLL_JOB_PREFIX + url not in scheduled]
    spread = min(interval, FIRST_POLL_SPREAD_SECONDS)
    for index, (url, tickers) in enumerate(feeds):
        scheduler.add_job(
            quiet_at_shutdown(pipeline.poll),
            IntervalTrigger(seconds=interval, jitter=interval * config.poll_jitter),
            args=[url, tickers],
            id=POLL_JOB_PREFIX + url,
            next_run_time=now() + timedelta(seconds=spread * index / len(feeds) + random.uniform(0, 0.5)),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=int(interval),
        )


def reload_polls(scheduler: BaseScheduler, pipeline: Pipeline, running: Config, load: Callable[[], Config]) -> Config:
    """Read the config again and make the poll jobs follow its feeds; returns the config now running. A config
    that does not load is logged and changes nothing; keys a reload cannot apply are named. Feeds kept keep
    their poll times unless the interval or jitter changed."""
    try:
        loaded = load()
    except ConfigError as exc:
        log.error("config reload failed, still running the previous one: %s", " ".join(str(exc).splitlines()))
        return running
    if later := changed_keys(_without_reloaded(running), _without_reloaded(loaded)):
        log.warning("config reload: %s changed; that takes effect at the next start", ", ".join(later))
    updated = running.model_copy(update={key: getattr(loaded, key) for key in RELOADED_KEYS})
    before = {job.id for job in scheduler.get_jobs() if job.id.startswith(POLL_JOB_PREFIX)}
    wanted = {POLL_JOB_PREFIX + url for url, _ in updated.feeds()}
    timing = ("poll_interval_seconds", "poll_jitter")
    retimed = any(getattr(updated, key) != getattr(running, key) for key in timing)
    for job_id in before if retimed else before - wanted:
        scheduler.remove_job(job_id)
    schedule_polls(scheduler, pipeline, updated)
    log.info("config reloaded: feeds %d added, %d removed, %d polled now (watchlist of %d)",
             len(wanted - before), len(before - wanted), len(wanted), len(updated.watchlist))  # fmt: skip
    return updated


def _without_reloaded(config: Config) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude=set(RELOADED_KEYS))


def changed_keys(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the keys whose values differ, tables compared key by key."""
    changed = []
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            changed += changed_keys(old, new, f"{prefix}{key}.")
        elif old != new:
            changed.append(prefix + key)
    return changed
