"""The pipeline: poll -> fetch -> extract -> dedupe -> store -> analyze -> store -> alert, stages joined by bounded
queues.

Every story is written to DuckDB the moment a feed yields it (state 'pending'), so the queues only carry work that
is already durable: a stop or a crash loses nothing, and a restart picks the backlog up from the database.
CPU-heavy work never runs on the event loop: extraction and fingerprinting run in worker processes, the model in a
worker thread (llama.cpp releases the GIL while it computes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from monitor.config import Config
from scrapers.dedupe import NearDuplicateIndex, fingerprint
from scrapers.extract import Extracted, extract_article
from scrapers.feeds import FeedError, poll_feed
from scrapers.fetch import Page, fetch_page
from scrapers.http import FetchError, HttpClient
from storage import alerts, queries, writes
from storage.writer import StoreWriter
from storage.writes import StoryRef

if TYPE_CHECKING:
    from model.analyzer import AnalysisResult, Analyzer
    from monitor.alerts import AlertSender

log = logging.getLogger(__name__)
T = TypeVar("T")

# Worth another try later even though an immediate retry is not: paywalls and bot walls often lift.
PAGE_RETRY_STATUSES = {401, 402, 403}
# Store-stage tasks awaiting the single writer at once: they only wait, and the writer batches what they submit,
# so extraction and the model never sit idle while a write batch fills.
STORE_CONCURRENCY = 64
FINGERPRINT_WINDOW = timedelta(days=14)


def now() -> datetime:
    return datetime.now(UTC)


def extract_and_fingerprint(page: Page) -> tuple[Extracted | None, int | None]:
    """Runs in a worker process: the page decoded, its main text and, when long enough to compare, its SimHash."""
    extracted = extract_article(page.html(), page.final_url)
    return extracted, fingerprint(extracted.text) if extracted else None


def failed_analysis(analyzer: Analyzer, error: str) -> AnalysisResult:
    from model.analyzer import AnalysisResult
    from model.prompt import PROMPT_VERSION

    backend = analyzer.backend
    return AnalysisResult(
        entities=[], ok=False, error=error, raw_output="", model=backend.model_id, adapter=backend.adapter,
        prompt_version=PROMPT_VERSION, latency_ms=0.0, attempts=0, prompt_tokens=0, completion_tokens=0,
    )


@dataclass(frozen=True)
class AnalysisJob:
    story: StoryRef
    version: int  # the content version analyzed: a later page fetch makes a newer one
    title: str | None
    text: str


async def _run_job(job: Callable[[], Awaitable[None]]) -> None:
    await job()


@dataclass
class PipelineStats:
    polls: int = 0
    poll_errors: int = 0
    stories_new: int = 0
    pages_stored: int = 0
    page_failures: int = 0
    near_duplicates: int = 0
    analyzed: int = 0
    analysis_failures: int = 0
    alerts: int = 0
    alerts_undelivered: int = 0
    model_seconds: float = 0.0  # summed over analyses, failed ones included
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_poll_ok: datetime | None = None
    last_errors: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        log.warning(message)
        self.last_errors = (self.last_errors + [message])[-20:]


class Pipeline:
    def __init__(
        self,
        config: Config,
        writer: StoreWriter,
        http: HttpClient,
        cpu_pool: Executor,
        *,
        analyzer: Analyzer | None = None,
        model_thread: Executor | None = None,
        before_analysis: Callable[[], None] | None = None,
        alert_sender: AlertSender | None = None,
    ) -> None:
        self.config = config
        self.settings = config.pipeline
        self.writer = writer
        self.http = http
        self.cpu_pool = cpu_pool
        self.analyzer = analyzer
        self.model_thread = model_thread
        self.before_analysis = before_analysis  # runs in the model thread before each article (adapter hot swap)
        self.alert_sender = alert_sender  # None: no swing checks
        self.stats = PipelineStats()
        size = self.settings.queue_size
        self.fetch_queue: asyncio.Queue[StoryRef] = asyncio.Queue(size)
        self.extract_queue: asyncio.Queue[tuple[StoryRef, Page]] = asyncio.Queue(size)
        self.store_queue: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue(size)
        self.analyze_queue: asyncio.Queue[AnalysisJob] = asyncio.Queue(size)
        self.alert_queue: asyncio.Queue[frozenset[str]] = asyncio.Queue(size)  # tickers of a stored analysis
        self.duplicates = NearDuplicateIndex()
        self._in_flight: set[int] = set()
        self._stopping = asyncio.Event()
        self._workers: list[asyncio.Task] = []

    # -- lifecycle -------------------------------------------------------------------------------------------------

    @property
    def queues(self) -> dict[str, asyncio.Queue]:
        """Each stage's input queue, by stage name."""
        return {"fetch": self.fetch_queue, "extract": self.extract_queue, "store": self.store_queue,
                "analyze": self.analyze_queue, "alert": self.alert_queue}  # fmt: skip

    async def start(self) -> None:
        since = now() - FINGERPRINT_WINDOW
        for story_id, fingerprint in await self.writer.submit(partial(queries.recent_fingerprints, since=since)):
            self.duplicates.add(story_id, fingerprint)
        stages: list[tuple[str, int, Callable]] = [
            ("fetch", self.settings.fetch_concurrency, self._fetch),
            ("extract", self.settings.extract_processes, self._extract),
            ("store", STORE_CONCURRENCY, _run_job),
        ]
        if self.analyzer is not None:
            stages.append(("analyze", 1, self._analyze))
        if self.alert_sender is not None:
            stages.append(("alert", 1, self._alert))
        for name, count, handler in stages:
            self._workers += [
                asyncio.create_task(self._work(self.queues[name], handler), name=f"{name}-{i}") for i in range(count)
            ]
        if self.alert_sender is not None:
            await self._catch_up_alerts()

    async def load_backlog(self) -> None:
        """Queue what the database says is unfinished: pages never fetched, retries due, content never analyzed."""
        for story in await self.writer.submit(partial(queries.stories_to_fetch, now=now())):
            await self._enqueue_fetch(story)
        if self.analyzer is not None:
            for story, version, title, text in await self.writer.submit(queries.analysis_backlog):
                await self.analyze_queue.put(AnalysisJob(story, version, title, text))

    async def drain(self) -> None:
        """Wait until every queued story went through every stage."""
        stages = (self.fetch_queue, self.extract_queue, self.store_queue, self.analyze_queue, self.store_queue,
                  self.alert_queue)  # fmt: skip
        for queue in stages:
            await queue.join()

    async def stop(self, grace: float) -> None:
        """Take no new work, give in-flight items `grace` seconds, then cancel. Unfinished stories stay queued in
        the database (state 'pending', or content without analysis) for the next start."""
        self._stopping.set()
        idle = [task for task in self._workers if not getattr(task, "busy", False)]
        for task in idle:
            task.cancel()
        _, late = await asyncio.wait(self._workers, timeout=grace) if self._workers else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if late:
            log.warning("stopped %d stage workers mid-item; their stories resume on the next start", len(late))

    # -- polling ---------------------------------------------------------------------------------------------------

    async def poll(self, feed_url: str, tickers: tuple[str, ...]) -> int:
        """Poll one feed; accept its items into the database and queue the new stories. Returns how many."""
        if self._stopping.is_set():
            return 0
        etag, last_modified = await self.writer.submit(partial(queries.feed_validators, url=feed_url))
        self.stats.polls += 1
        try:
            result = await poll_feed(self.http, feed_url, tickers, etag=etag, last_modified=last_modified)
        except (FeedError, FetchError) as exc:
            self.stats.poll_errors += 1
            self.stats.error(f"feed {feed_url}: {getattr(exc, 'reason', exc)}")
            await self.writer.submit(
                partial(writes.record_poll, feed_url=feed_url, tickers=tickers, now=now(), error=str(exc))
            )
            return 0
        if result.warning:
            self.stats.error(f"feed {feed_url}: {result.warning} (entries still read)")
        stamp = self.stats.last_poll_ok = now()

        def accept(conn):  # one transaction: the items and the feed's new validators land together
            new = writes.accept_items(conn, result.items, stamp)
            writes.record_poll(
                conn, feed_url, tickers, stamp, etag=result.etag, last_modified=result.last_modified,
                items_seen=len(result.items), stories_new=len(new), error=result.warning,
            )
            return new

        new_stories = await self.writer.submit(accept)
        self.stats.stories_new += len(new_stories)
        for story in new_stories:
            await self._enqueue_fetch(story)
        return len(new_stories)

    async def _enqueue_fetch(self, story: StoryRef) -> None:
        if story.id in self._in_flight:
            return
        self._in_flight.add(story.id)
        await self.fetch_queue.put(story)

    # -- stage workers ---------------------------------------------------------------------------------------------

    async def _work(self, queue: asyncio.Queue[T], handle: Callable[[T], Awaitable[None]]) -> None:
        task = asyncio.current_task()
        while not self._stopping.is_set():
            item = await queue.get()
            task.busy = True  # type: ignore[attr-defined]
            try:
                await handle(item)
            except Exception:  # a bug in one story must not stop the stage
                log.exception("stage %s failed on %r", task.get_name(), item)
            finally:
                task.busy = False  # type: ignore[attr-defined]
                queue.task_done()

    async def _fetch(self, story: StoryRef) -> None:
        try:
            page = await fetch_page(self.http, story.url)
        except FetchError as exc:
            retryable = exc.retryable or exc.status in PAGE_RETRY_STATUSES
            await self.store_queue.put(partial(self._page_failed, story, str(exc), retryable=retryable))
            return
        await self.extract_queue.put((story, page))

    async def _extract(self, item: tuple[StoryRef, Page]) -> None:
        story, page = item
        loop = asyncio.get_running_loop()
        extracted, fingerprint = await loop.run_in_executor(self.cpu_pool, extract_and_fingerprint, page)
        if extracted is None:
            error = f"no article text found on {page.final_url}"
            await self.store_queue.put(partial(self._page_failed, story, error, retryable=False))
            return
        duplicate_of = None
        if fingerprint is not None:  # look up and add in one step on the loop: two copies can't both be "first"
            duplicate_of = self.duplicates.find(fingerprint)
            if duplicate_of is None:
                self.duplicates.add(story.id, fingerprint)
        # only the URL goes on: a queued page's HTML would stay in memory until the write lands
        await self.store_queue.put(
            partial(self._store_page, story, page.final_url, extracted, fingerprint, duplicate_of)
        )

    async def _store_page(
        self, story: StoryRef, final_url: str, extracted: Extracted, fingerprint: int | None, duplicate_of: int | None
    ) -> None:
        version = await self.writer.submit(
            partial(
                writes.store_page, story_id=story.id, now=now(), final_url=final_url, title=extracted.title,
                body=extracted.text, author=extracted.author, published_at=extracted.published_at,
                simhash=fingerprint, duplicate_of=duplicate_of,
            )
        )
        self._in_flight.discard(story.id)
        self.stats.pages_stored += 1
        if duplicate_of is not None:
            self.stats.near_duplicates += 1
            log.info("story %d is a near copy of %d: stored, not analyzed", story.id, duplicate_of)
            return
        await self._queue_analysis(AnalysisJob(story, version, extracted.title or story.title, extracted.text))

    async def _page_failed(self, story: StoryRef, error: str, *, retryable: bool) -> None:
        """Keep the feed's title and description as the story's text, and retry the page later, a bounded number
        of times with a doubling delay."""
        self.stats.page_failures += 1
        self.stats.error(f"page {story.url}: {error}")

        def record(conn):
            attempts = conn.execute("SELECT fetch_attempts FROM stories WHERE id = ?", [story.id]).fetchone()[0]
            retry_at = None
            if retryable and attempts < self.settings.page_retries:
                retry_at = now() + timedelta(seconds=self.settings.page_retry_delay_seconds * 2**attempts)
            return writes.record_fetch_failure(conn, story.id, now(), error=error, retry_at=retry_at)

        version, feed_text_is_new = await self.writer.submit(record)
        self._in_flight.discard(story.id)
        if feed_text_is_new:
            await self._queue_analysis(AnalysisJob(story, version, story.title, story.summary))

    async def _queue_analysis(self, job: AnalysisJob) -> None:
        if self.analyzer is not None:
            await self.analyze_queue.put(job)

    async def _analyze(self, job: AnalysisJob) -> None:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self.model_thread, partial(self._run_model, job.text, job.title, job.story.tickers)
            )
        except Exception as exc:  # an empty text or a backend that produced nothing: recorded, not retried forever
            result = failed_analysis(self.analyzer, f"{type(exc).__name__}: {exc}")
        await self.store_queue.put(partial(self._store_analysis, job, result))

    async def _store_analysis(self, job: AnalysisJob, result: AnalysisResult) -> None:
        await self.writer.submit(
            partial(writes.store_analysis, story_id=job.story.id, content_version=job.version, result=result, now=now())
        )
        self.stats.model_seconds += result.latency_ms / 1000
        self.stats.prompt_tokens += result.prompt_tokens
        self.stats.completion_tokens += result.completion_tokens
        if result.ok:
            self.stats.analyzed += 1
        else:
            self.stats.analysis_failures += 1
            self.stats.error(f"analysis of story {job.story.id} failed: {result.error}")
        tickers = frozenset(entity.ticker for entity in result.entities if entity.ticker)
        if tickers and self.alert_sender is not None:
            await self.alert_queue.put(tickers)

    async def _alert(self, tickers: frozenset[str]) -> None:
        """Record an alert for each of `tickers` whose sentiment swung, then send it where the config says."""
        check = partial(alerts.fire_swing_alerts, tickers=sorted(tickers), now=now(), rule=self.config.alerts.rule())
        for alert in await self.writer.submit(check):
            self.stats.alerts += 1
            log.warning("alert: %s", alert.message)
            await self._deliver(alert)

    async def _deliver(self, alert: alerts.Alert) -> None:
        if not self.alert_sender.has_targets:
            return
        if error := await self.alert_sender.send(alert):
            self.stats.alerts_undelivered += 1
            self.stats.error(f"alert {alert.id} ({alert.ticker}) not delivered: {error}")
        await self.writer.submit(partial(alerts.record_delivery, alert_id=alert.id, now=now(), error=error))

    async def _catch_up_alerts(self) -> None:
        """At start, what a stop may have cut short: alerts recorded but never sent, and swing checks that were
        still queued (every ticker in the latest window's news is checked once)."""
        rule, started = self.config.alerts.rule(), now()
        unsent = partial(alerts.undelivered_alerts, since=started - rule.window, window=rule.window)
        for alert in await self.writer.submit(unsent):
            log.info("sending alert %d (%s), fired %s and not sent then", alert.id, alert.ticker, alert.fired_at)
            await self._deliver(alert)
        in_news = partial(alerts.swings, now=started, window=rule.window, baseline=rule.baseline)
        if tickers := frozenset(swing.ticker for swing in await self.writer.submit(in_news)):
            await self.alert_queue.put(tickers)

    def _run_model(self, text: str, title: str | None, tickers: tuple[str, ...]) -> AnalysisResult:
        if self.before_analysis is not None:  # between two articles: the one before finished on the old adapter
            self.before_analysis()
        return self.analyzer.analyze(text, title=title, ticker_hints=tickers)
