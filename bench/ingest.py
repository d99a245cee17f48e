"""Ingestion benchmark: N tickers x K stories polled from a loopback server through fetch, extract, dedupe and store.

    python -m bench.ingest --tickers 500 --stories-per-ticker 4 [--json out.json] [--markdown]

Each part runs in a freshly spawned process, so its CPU time and memory peak are its own: the loopback news server
(apart, so that serving is not charged to the measured event loop), then the pipeline (`run_daemon(once=True)`,
model off, 2 extraction processes), then the bound: bare trafilatura on the very same page strings in a 2-process
pool kept busy without pause, and in one process. Rates are wall-clock and share the machine with whatever else
runs; the CPU milliseconds per article are the figures to compare across busy runs.

Every page is one of the five real captured pages (monitor/demo/data/html) with a paragraph of its own inserted
before `</body>`, so the N*K pages differ and live at distinct URLs. They are near copies of five pages and SimHash
says so: the pipeline still fetches, extracts, fingerprints and stores each of them, and the run reports how many
it flagged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import sys
import tempfile
import time
import urllib.request
import uuid
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Self
from xml.sax.saxutils import escape

from aiohttp import web
from rich.console import Console
from rich.table import Table

from bench._common import (
    BenchError,
    LagSummary,
    LoopLagProbe,
    Machine,
    machine,
    run_in_fresh_process,
    usage,
)
from monitor.config import Config, PipelineSettings
from monitor.daemon import RunSummary, run_daemon
from monitor.demo.server import load_captures
from scrapers.extract import extract_article
from scrapers.http import HttpSettings
from storage.db import Database

EXTRACT_PROCESSES = 2
BATCH_SIZE = 10  # tickers per feed request, the default
FEED_PATH = "/rss/2.0/headline"  # Yahoo's, with ?s=A,B,C
# Loopback is one "host": let it answer as fast as it can, with about as many requests in flight as a busy site allows.
LOOPBACK_HTTP = HttpSettings(per_host_concurrency=16, per_host_rate=100_000.0)


# -- the pages -------------------------------------------------------------------------------------------------------


def ticker_symbols(count: int) -> list[str]:
    return [f"T{i:04d}" for i in range(count)]


class StoryCorpus:
    """K stories for each ticker, at `base_url`; story k of the i-th ticker is capture (i*K + k) mod 5."""

    def __init__(self, tickers: Sequence[str], stories_per_ticker: int, base_url: str) -> None:
        self.tickers = list(tickers)
        self.stories_per_ticker = stories_per_ticker
        self.base_url = base_url
        self.captures = load_captures().articles
        self._position = {ticker: i for i, ticker in enumerate(self.tickers)}
        self.heads: list[str] = []  # each capture up to where a story's own paragraph goes
        self._tails: list[str] = []
        for capture in self.captures:
            html = capture.html.decode("utf-8")
            cut = html.rfind("</body>") if "</body>" in html else len(html)
            self.heads.append(html[:cut])
            self._tails.append(html[cut:])

    def __len__(self) -> int:
        return len(self.tickers) * self.stories_per_ticker

    def stories(self) -> Iterator[tuple[str, int]]:
        for ticker in self.tickers:
            for k in range(self.stories_per_ticker):
                yield ticker, k

    def capture_index(self, ticker: str, k: int) -> int:
        """Raises KeyError for a story that is not in the corpus."""
        if not 0 <= k < self.stories_per_ticker:
            raise KeyError(f"{ticker} has no story {k}")
        return (self._position[ticker] * self.stories_per_ticker + k) % len(self.captures)

    def url(self, ticker: str, k: int) -> str:
        return f"{self.base_url}/news/{ticker}/{k}.html?.tsrc=rss"

    def page_parts(self, ticker: str, k: int) -> tuple[int, str]:
        """The story's capture (its head is `heads[index]`) and what follows the head: its paragraph, the tail."""
        index = self.capture_index(ticker, k)
        paragraph = f'<p class="bench-story">Story {k + 1} of {self.stories_per_ticker} about {ticker}.</p>'
        return index, paragraph + self._tails[index]

    def page(self, ticker: str, k: int) -> str:
        index, rest = self.page_parts(ticker, k)
        return self.heads[index] + rest

    def feed(self, tickers: Sequence[str]) -> str:
        """A Yahoo-shaped RSS channel (items as the demo FixtureServer writes them) with every story of `tickers`."""
        items = []
        for ticker in tickers:
            for k in range(self.stories_per_ticker):
                capture = self.captures[self.capture_index(ticker, k)]
                items.append(
                    f"<item>\n<description>{escape(capture.summary)}</description>\n"
                    f'<guid isPermaLink="false">{uuid.uuid5(uuid.NAMESPACE_URL, self.url(ticker, k))}</guid>\n'
                    f"<link>{escape(self.url(ticker, k))}</link>\n"
                    f"<pubDate>{capture.published}</pubDate>\n<title>{escape(capture.title)}</title>\n</item>"
                )
        joined = escape(",".join(tickers))
        return (
            f'<rss version="2.0">\n<channel>\n<title>Yahoo! Finance: {joined} News</title>\n'
            f"<description>Latest Financial News for {joined}</description>\n" + "\n".join(items)
            + "\n</channel>\n</rss>\n"
        )


# -- the loopback server, in a process of its own ----------------------------------------------------------------------


class _NewsApp:
    """Serves the corpus; pages gzip'd when asked, from a compressor primed once per capture with the shared head."""

    def __init__(self, corpus: StoryCorpus) -> None:
        self.corpus = corpus
        self.first_feed_at: float | None = None  # time.time(): comparable across processes
        self.feed_requests = 0
        self.page_requests = 0
        self._heads = [head.encode() for head in corpus.heads]
        self._gzip_heads = []
        for head in self._heads:
            compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip container
            self._gzip_heads.append((compressor.compress(head), compressor))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(FEED_PATH, self.feed),
            web.get("/news/{ticker}/{k:\\d+}.html", self.page),
            web.get("/stats", self.stats),
        ]

    async def feed(self, request: web.Request) -> web.Response:
        if self.first_feed_at is None:
            self.first_feed_at = time.time()
        self.feed_requests += 1
        try:
            body = self.corpus.feed([s for s in request.query.get("s", "").split(",") if s])
        except KeyError as exc:
            raise web.HTTPNotFound(text=f"not a benchmark ticker: {exc}") from None
        return web.Response(body=body.encode(), content_type="application/rss+xml", charset="utf-8")

    async def page(self, request: web.Request) -> web.Response:
        ticker, k = request.match_info["ticker"], int(request.match_info["k"])
        try:
            index, rest_text = self.corpus.page_parts(ticker, k)
        except KeyError:
            raise web.HTTPNotFound(text=f"no story {k} for {ticker}") from None
        self.page_requests += 1
        rest = rest_text.encode()
        headers = {"Content-Type": "text/html; charset=utf-8"}
        if "gzip" not in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=self._heads[index] + rest, headers=headers)
        head_gzip, primed = self._gzip_heads[index]
        compressor = primed.copy()
        body = head_gzip + compressor.compress(rest) + compressor.flush()
        return web.Response(body=body, headers={**headers, "Content-Encoding": "gzip"})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "first_feed_at": self.first_feed_at,
                "feed_requests": self.feed_requests,
                "page_requests": self.page_requests,
                "cpu_s": time.process_time(),
            }
        )


async def _serve(tickers: list[str], stories_per_ticker: int, ready: Connection) -> None:
    sock = socket.create_server(("127.0.0.1", 0))  # bound first: the feeds' links need the port
    host, port = sock.getsockname()[:2]
    news = _NewsApp(StoryCorpus(tickers, stories_per_ticker, f"http://{host}:{port}"))
    app = web.Application()
    app.add_routes(news.routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    ready.send(news.corpus.base_url)
    ready.close()
    await asyncio.Event().wait()  # until the parent terminates this process


def _serve_process(tickers: list[str], stories_per_ticker: int, ready: Connection) -> None:
    asyncio.run(_serve(tickers, stories_per_ticker, ready))


class LoopbackNewsServer:
    """The news server in a spawned process, for `with`; `stats()` says what it served."""

    def __init__(self, tickers: list[str], stories_per_ticker: int) -> None:
        self.tickers = tickers
        self.stories_per_ticker = stories_per_ticker
        self.base_url = ""
        self._process: multiprocessing.process.BaseProcess | None = None

    @property
    def feed_url_template(self) -> str:
        return self.base_url + FEED_PATH + "?s={symbols}"

    def __enter__(self) -> Self:
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve_process, args=(self.tickers, self.stories_per_ticker, sender), name="bench-news-server"
        )
        self._process.start()
        sender.close()
        try:
            self.base_url = receiver.recv()
        except EOFError:
            self._process.join()
            raise BenchError(f"the loopback news server died while starting (exit code {self._process.exitcode})")
        finally:
            receiver.close()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join()

    def stats(self) -> dict[str, float | int | None]:
        with urllib.request.urlopen(self.base_url + "/stats", timeout=10) as response:
            return json.load(response)


# -- the pipeline ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineRun:
    finished_at: float  # time.time() when run_daemon returned: the last store is committed
    daemon_seconds: float  # the whole run_daemon call, start-up and shutdown included
    stored: int
    near_duplicates: int
    failures: list[str]  # feed and page errors
    lag: LagSummary
    cpu_s: float  # this process during run_daemon: event loop, store writer, pool feeding
    workers_cpu_s: float  # the extraction processes
    peak_rss_mb: float
    workers_peak_rss_mb: float  # the largest extraction process


def measure_pipeline(feed_url_template: str, tickers: list[str]) -> PipelineRun:
    """One `run_daemon(once=True)` over the loopback feeds, model off; runs in a process of its own."""
    with tempfile.TemporaryDirectory(prefix="sentimon-bench-") as scratch:
        database = Path(scratch) / "bench.duckdb"
        config = Config(
            watchlist=tickers,
            feed_url=feed_url_template,
            batch_size=BATCH_SIZE,
            database=database,
            http=LOOPBACK_HTTP,
            pipeline=PipelineSettings(analyze=False, extract_processes=EXTRACT_PROCESSES),
        )
        before = usage()
        started = time.perf_counter()
        summary, lag = asyncio.run(_run_daemon_probed(config))
        daemon_seconds = time.perf_counter() - started
        finished_at = time.time()
        after = usage()
        with Database(database).read() as conn:
            stored, near_duplicates = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'page'), count(duplicate_of) FROM stories"
            ).fetchone()
    stats = summary.stats
    return PipelineRun(
        finished_at=finished_at,
        daemon_seconds=daemon_seconds,
        stored=stored,
        near_duplicates=near_duplicates,
        failures=stats.last_errors if stats.poll_errors or stats.page_failures else [],
        lag=lag,
        cpu_s=after.cpu_s - before.cpu_s,
        workers_cpu_s=after.children_cpu_s - before.children_cpu_s,
        peak_rss_mb=after.peak_rss_mb,
        workers_peak_rss_mb=after.children_peak_rss_mb,
    )


async def _run_daemon_probed(config: Config) -> tuple[RunSummary, LagSummary]:
    async with LoopLagProbe() as probe:
        summary = await run_daemon(config, once=True)
    return summary, probe.summary()


# -- the bound: bare trafilatura on the same pages -------------------------------------------------------------------


@dataclass(frozen=True)
class BoundRun:
    pages: int
    pages_per_s: float  # EXTRACT_PROCESSES processes
    workers_cpu_s: float
    single_process_pages: int
    single_process_pages_per_s: float


def measure_bound(base_url: str, tickers: list[str], stories_per_ticker: int, single_process_pages: int) -> BoundRun:
    """extract_article on every page string the server hands out: in a pool of EXTRACT_PROCESSES kept saturated
    (two pages queued per worker, so no worker waits for its next page), then inline on the first pages."""
    corpus = StoryCorpus(tickers, stories_per_ticker, base_url)
    stories = list(corpus.stories())
    before = usage()
    started = time.perf_counter()
    with ProcessPoolExecutor(EXTRACT_PROCESSES) as pool:
        in_flight: set[Future] = set()
        for ticker, k in stories:
            if len(in_flight) >= 2 * EXTRACT_PROCESSES:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                _check_extracted(done)
            in_flight.add(pool.submit(extract_article, corpus.page(ticker, k), corpus.url(ticker, k)))
        _check_extracted(wait(in_flight).done)
    parallel_seconds = time.perf_counter() - started
    workers_cpu_s = usage().children_cpu_s - before.children_cpu_s

    sample = stories[:single_process_pages]
    started = time.perf_counter()
    for ticker, k in sample:
        if extract_article(corpus.page(ticker, k), corpus.url(ticker, k)) is None:
            raise BenchError(f"trafilatura found no text in {corpus.url(ticker, k)}")
    single_seconds = time.perf_counter() - started
    return BoundRun(
        len(stories), len(stories) / parallel_seconds, workers_cpu_s, len(sample), len(sample) / single_seconds
    )


def _check_extracted(done: set[Future]) -> None:
    if any(future.result() is None for future in done):
        raise BenchError("trafilatura found no text in one of the benchmark pages")


# -- one benchmark run -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    tickers: int
    stories_per_ticker: int
    articles: int  # stored
    near_duplicates: int
    pages_served: int
    wall_s: float  # first feed request to the last store
    daemon_s: float  # run_daemon as a whole, start-up and shutdown included
    articles_per_s: float
    bound_per_s: float  # bare trafilatura, EXTRACT_PROCESSES processes
    bound_single_per_s: float
    bound_single_pages: int
    ratio: float
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    rss_main_mb: float
    rss_children_mb: float
    # CPU time per stored article, by where it was spent
    cpu_main_ms: float  # the daemon process: event loop, store writer thread, pool feeding
    cpu_workers_ms: float  # the daemon's extraction processes
    cpu_server_ms: float  # the loopback server (not charged to the daemon, but sharing its cores)
    cpu_bound_ms: float  # bare trafilatura's workers
    # bound CPU / (daemon + workers) CPU: the ratio 2 cores to ourselves would give, whatever else ran alongside
    cpu_ratio: float
    machine: Machine


def run_benchmark(tickers: int, stories_per_ticker: int, single_process_pages: int) -> IngestResult:
    symbols = ticker_symbols(tickers)
    expected = tickers * stories_per_ticker
    with LoopbackNewsServer(symbols, stories_per_ticker) as server:
        server_cpu_before = server.stats()["cpu_s"]
        run = run_in_fresh_process(measure_pipeline, server.feed_url_template, symbols)
        served = server.stats()
        bound = run_in_fresh_process(measure_bound, server.base_url, symbols, stories_per_ticker, single_process_pages)
    if run.stored != expected or run.failures:
        raise BenchError(
            f"the pipeline stored {run.stored} of {expected} articles; its errors:\n  " + "\n  ".join(run.failures)
        )
    wall = run.finished_at - served["first_feed_at"]
    rate = run.stored / wall
    per_article_ms = 1000 / run.stored
    cpu_bound_ms = bound.workers_cpu_s * 1000 / bound.pages
    return IngestResult(
        tickers=tickers,
        stories_per_ticker=stories_per_ticker,
        articles=run.stored,
        near_duplicates=run.near_duplicates,
        pages_served=served["page_requests"],
        wall_s=wall,
        daemon_s=run.daemon_seconds,
        articles_per_s=rate,
        bound_per_s=bound.pages_per_s,
        bound_single_per_s=bound.single_process_pages_per_s,
        bound_single_pages=bound.single_process_pages,
        ratio=rate / bound.pages_per_s,
        lag_p50_ms=run.lag.p50_ms,
        lag_p99_ms=run.lag.p99_ms,
        lag_max_ms=run.lag.max_ms,
        rss_main_mb=run.peak_rss_mb,
        rss_children_mb=run.workers_peak_rss_mb,
        cpu_main_ms=run.cpu_s * per_article_ms,
        cpu_workers_ms=run.workers_cpu_s * per_article_ms,
        cpu_server_ms=(served["cpu_s"] - server_cpu_before) * per_article_ms,
        cpu_bound_ms=cpu_bound_ms,
        cpu_ratio=cpu_bound_ms / ((run.cpu_s + run.workers_cpu_s) * per_article_ms),
        machine=machine(),
    )


# -- reporting -------------------------------------------------------------------------------------------------------

COLUMNS = (
    "tickers", "articles", "near copies", "wall s", "articles/s", f"bound articles/s ({EXTRACT_PROCESSES} proc)",
    "bound articles/s (1 proc)", "ratio", "loop lag p50/p99/max ms", "peak RSS main/children MB",
)
CPU_COLUMNS = (
    "daemon process", "extraction workers", "loopback server", "bare trafilatura workers",
    "CPU-time ratio (bound / daemon+workers)",
)


def rows(result: IngestResult) -> tuple[list[str], list[str]]:
    """The main row, and CPU ms per article."""
    main = [
        str(result.tickers),
        str(result.articles),
        str(result.near_duplicates),
        f"{result.wall_s:.1f}",
        f"{result.articles_per_s:.1f}",
        f"{result.bound_per_s:.1f}",
        f"{result.bound_single_per_s:.1f}",
        f"{result.ratio:.2f}",
        f"{result.lag_p50_ms:.1f} / {result.lag_p99_ms:.1f} / {result.lag_max_ms:.0f}",
        f"{result.rss_main_mb:.0f} / {result.rss_children_mb:.0f}",
    ]
    cpu = [f"{ms:.1f}" for ms in (result.cpu_main_ms, result.cpu_workers_ms, result.cpu_server_ms, result.cpu_bound_ms)]
    cpu.append(f"{result.cpu_ratio:.2f}")
    return main, cpu


def markdown(result: IngestResult) -> str:
    lines = []
    for columns, values in zip((COLUMNS, CPU_COLUMNS), rows(result)):
        lines += ["| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns), "| " + " | ".join(values) + " |", ""]
    return "\n".join(lines)


def tables(result: IngestResult) -> list[Table]:
    main = Table(title=f"ingestion, {result.machine.describe()}")
    cpu = Table(title="CPU time per stored article, ms")
    for view, columns, values in zip((main, cpu), (COLUMNS, CPU_COLUMNS), rows(result)):
        for column in columns:
            view.add_column(column, justify="right")
        view.add_row(*values)
    return [main, cpu]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    # Defaults sized to finish in about 3 minutes on 2 cores; docs/benchmarks.md uses --stories-per-ticker 4.
    parser.add_argument("--tickers", type=_positive, default=500, help="watchlist size (default 500)")
    parser.add_argument("--stories-per-ticker", type=_positive, default=1, help="distinct stories per ticker (1)")
    parser.add_argument(
        "--single-process-pages", type=_positive, default=200,
        help="pages the 1-process bound extracts (default 200; the pages cycle through the five captures)",
    )
    parser.add_argument("--json", type=Path, help="also write the result to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    args = parser.parse_args(argv)
    console = Console()
    try:
        with console.status(f"{args.tickers} tickers x {args.stories_per_ticker} stories: pipeline, then bound…"):
            result = run_benchmark(args.tickers, args.stories_per_ticker, args.single_process_pages)
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/] {exc}")
        return 1
    for view in tables(result):
        console.print(view)
    console.print(
        f"{result.pages_served} pages served; run_daemon took {result.daemon_s:.1f} s in all "
        f"(start-up and shutdown included); 1-process bound over {result.bound_single_pages} pages"
    )
    if args.markdown:
        print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
