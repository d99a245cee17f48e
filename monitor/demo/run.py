"""`sentimon demo`: the real pipeline, offline, against the loopback server of bundled real captures."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from monitor.analysis import ModelUnavailable, build_analyzer
from monitor.config import Config, PipelineSettings
from monitor.daemon import run_daemon
from monitor.demo.server import FixtureServer
from scrapers.http import HttpSettings
from storage.db import Database

DEMO_TICKERS = ["MSFT", "7203.T", "AAPL", "NVDA"]


def run_demo(console: Console, *, database: Path | None, with_model: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="sentimon-demo-") as scratch:
        path = database or Path(scratch) / "demo.duckdb"
        asyncio.run(_ingest(console, path, with_model))
        _show(console, path, with_model)
        if database:
            console.print(f"\nthe demo database is kept at {path}: try `SENTIMON_DATABASE={path} sentimon articles "
                          "--since 3000d` (its captures are from 2020 and 2026), or query it with DuckDB")


async def _ingest(console: Console, path: Path, with_model: bool) -> None:
    async with FixtureServer() as server:
        config = Config(
            watchlist=DEMO_TICKERS,
            feed_url=server.feed_url_template,
            batch_size=1,
            database=path,
            http=HttpSettings(per_host_concurrency=4, per_host_rate=20.0),
            pipeline=PipelineSettings(analyze=with_model, write_interval_seconds=0.1),
        )
        console.print(f"loopback server of real Yahoo Finance captures at {server.base_url}")
        analyzer = None
        if with_model:
            try:
                with console.status("loading the sentiment model…"):
                    analyzer = build_analyzer(config)
            except ModelUnavailable as exc:
                console.print(f"[yellow]{exc}; showing ingestion only[/]")
        with console.status("polling feeds, fetching, extracting, deduplicating, storing, analyzing…"):
            summary = await run_daemon(config, once=True, analyzer=analyzer)
    stats = summary.stats
    console.print(
        f"{stats.polls} feeds polled, {stats.stories_new} stories, {stats.pages_stored} pages stored, "
        f"{stats.near_duplicates} near copies, {stats.analyzed} analyzed"
    )


def _show(console: Console, path: Path, with_model: bool) -> None:
    with Database(path).read() as conn:
        articles = conn.execute(
            "SELECT id, tickers, source, title, body_origin, duplicate_of, length(body) FROM articles ORDER BY id"
        ).fetchall()
        sentiment = conn.execute(
            "SELECT article_id, entity, ticker, polarity, category, score, confidence FROM entity_sentiment "
            "ORDER BY article_id, confidence DESC"
        ).fetchall()
    table = Table(title="articles")
    for column in ("id", "tickers", "source", "title", "text", "chars"):
        table.add_column(column, overflow="fold")
    for story_id, tickers, source, title, origin, duplicate_of, chars in articles:
        text = f"copy of {duplicate_of}" if duplicate_of else origin
        table.add_row(str(story_id), ",".join(tickers), source, title, text, str(chars))
    console.print(table)
    if not with_model:
        return
    table = Table(title="entity_sentiment")
    for column in ("article", "entity", "ticker", "polarity", "category", "score", "confidence"):
        table.add_column(column)
    for article_id, entity, ticker, polarity, category, score, confidence in sentiment:
        table.add_row(str(article_id), entity, ticker or "", polarity, category, f"{score:+.2f}", f"{confidence:.2f}")
    console.print(table)
