"""The daemon's training job: on the configured cron schedule, when enough new reviews came in, run the refresh
(train, evaluate, promote if it wins) in a separate, lower-priority process.

Training never runs in the daemon's process: the child (`python -m training.refresh --background`) lowers its own
priority and dies with the daemon. When it promotes a candidate it rewrites the registry's `current` pointer, and
the analyze stage switches adapters before its next article (training/hotswap.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from functools import partial

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger

from monitor.config import Config
from monitor.polling import quiet_at_shutdown
from storage import reviews
from storage.writer import StoreWriter
from training.registry import registry_for
from training.stack import training_stack_problem, untrainable_model

log = logging.getLogger(__name__)
CONFIG_FILE = "refresh-config.json"  # the daemon's effective configuration, for the child process


def schedule_training(scheduler: BaseScheduler, config: Config, writer: StoreWriter) -> None:
    settings = config.training
    if problem := untrainable_model(config.model) or training_stack_problem():
        log.warning("training.enabled, but %s: not scheduled", problem)
        return
    scheduler.add_job(
        quiet_at_shutdown(train_if_due),
        CronTrigger.from_crontab(settings.schedule, timezone="UTC"),
        args=[config, writer],
        id="training",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=settings.misfire_grace_seconds,
    )


async def train_if_due(config: Config, writer: StoreWriter) -> dict | None:
    """Run the refresh if at least `training.min_new_reviews` reviews came in since the newest trained version's
    data; returns its outcome (None when not due or when it failed)."""
    since = registry_for(config).reviews_through()
    new = await writer.submit(partial(reviews.count_new_reviews, after_id=since))
    if new < config.training.min_new_reviews:
        log.info("training not due: %d new reviews, %d needed", new, config.training.min_new_reviews)
        return None
    log.info("training: %d new reviews; starting the refresh in a background process", new)
    return await run_refresh_process(config)


async def run_refresh_process(config: Config) -> dict | None:
    registry = registry_for(config)
    registry.root.mkdir(parents=True, exist_ok=True)
    config_file = registry.root / CONFIG_FILE
    config_file.write_text(config.model_dump_json(), encoding="utf-8")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "training.refresh", "--config-json", str(config_file), "--background",
        stdout=asyncio.subprocess.PIPE,  # its outcome, one JSON line; its log goes to our stderr
    )  # fmt: skip
    try:
        output, _ = await child.communicate()
    except asyncio.CancelledError:  # the daemon is stopping: so does training (a later run resumes its checkpoint)
        child.terminate()
        await child.wait()
        raise
    if child.returncode != 0:
        log.error("training failed (exit status %d); see the log above", child.returncode)
        return None
    try:
        outcome = json.loads(output.decode("utf-8").strip().splitlines()[-1])
    except (IndexError, ValueError):
        log.error("training ended without reporting an outcome: %r", output[-500:])
        return None
    log.info("training: %s", outcome["summary"])
    return outcome
