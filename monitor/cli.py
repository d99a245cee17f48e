"""The `sentimon` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from monitor.config import Config, ConfigError, config_path, load_config
from monitor.durations import parse_duration
from storage import queries
from storage.db import Database, DatabaseError

app = typer.Typer(help="sentimon: a streaming financial-news sentiment monitor.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Config file (default: $SENTIMON_CONFIG, else ./sentimon.toml, else built-in defaults)."
    ),
]
Since = Annotated[str, typer.Option("--since", help="How far back: 90s, 30m, 12h, 7d, 2w.")]


def fail(message: str, code: int = 2) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def settings(config_file: Path | None) -> Config:
    try:
        return load_config(config_file)
    except ConfigError as exc:
        raise fail(f"bad configuration in {exc}") from None


def duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise fail(str(exc)) from None


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", force=True
    )


@app.command()
def init(
    path: Annotated[Path | None, typer.Argument(help="Where to write it (default: the config path in use).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented default config file."""
    from monitor.config_template import default_config_text

    target = path or config_path(None)
    if target.exists() and not force:
        raise fail(f"{target} exists; pass --force to overwrite it")
    target.write_text(default_config_text(), encoding="utf-8")
    console.print(f"wrote {target}")


@app.command()
def run(
    config_file: ConfigOption = None,
    once: Annotated[bool, typer.Option("--once", help="Poll every feed once, process all that came in, exit.")] = False,
) -> None:
    """Run the daemon in the foreground (logs to stderr). SIGTERM or Ctrl-C stops it cleanly."""
    from monitor.daemon import run_daemon

    config = settings(config_file)
    setup_logging(config.log_level)
    analyzer = load_analyzer(config) if config.pipeline.analyze else None
    try:
        summary = asyncio.run(run_daemon(config, once=once, analyzer=analyzer))
    except DatabaseError as exc:
        raise fail(str(exc)) from None
    stats = summary.stats
    logging.getLogger("sentimon").info(
        "done: %d polls (%d failed), %d new stories, %d pages stored, %d page failures, %d near copies, "
        "%d analyzed, %d analyses failed validation",
        stats.polls, stats.poll_errors, stats.stories_new, stats.pages_stored, stats.page_failures,
        stats.near_duplicates, stats.analyzed, stats.analysis_failures,
    )


def load_analyzer(config: Config):
    """The model, loaded before the daemon starts so that a missing model is a startup error, not a mid-run one."""
    from monitor.analysis import ModelUnavailable, build_analyzer

    try:
        return build_analyzer(config)
    except ModelUnavailable as exc:
        raise fail(str(exc)) from None


def open_database(config: Config) -> Database:
    return Database(config.database, lock_timeout=10.0)


@app.command()
def status(config_file: ConfigOption = None) -> None:
    """Feeds, their last poll and errors, and what the database holds. Works while the daemon runs."""
    config = settings(config_file)
    try:
        with open_database(config).read() as conn:
            feeds = queries.feed_status(conn)
            totals = queries.counts(conn)
    except DatabaseError as exc:
        raise fail(str(exc)) from None
    table = Table(title=f"feeds ({config.database})")
    for column in ("feed", "tickers", "last poll", "last ok", "errors", "last error", "items", "new"):
        table.add_column(column, overflow="fold")
    for url, tickers, polled, ok, errs, last_error, seen, new in feeds:
        table.add_row(
            url, ",".join(tickers), _when(polled), _when(ok), str(errs) if errs else "",
            (last_error or "")[:120], str(seen), str(new), style="red" if errs else None,
        )
    console.print(table)
    summary = Table(title="database", show_header=False)
    for key, value in totals.items():
        summary.add_row(key.replace("_", " "), str(value))
    console.print(summary)


@app.command()
def articles(
    config_file: ConfigOption = None,
    ticker: Annotated[str | None, typer.Option("--ticker", "-t", help="Only this ticker.")] = None,
    since: Since = "1d",
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 50,
) -> None:
    """Recent articles, newest first."""
    config = settings(config_file)
    window = duration(since)
    try:
        with open_database(config).read() as conn:
            rows = queries.articles(conn, since=window, ticker=ticker.upper() if ticker else None, limit=limit)
    except DatabaseError as exc:
        raise fail(str(exc)) from None
    table = Table(title=f"articles since {since}" + (f" for {ticker.upper()}" if ticker else ""))
    for column in ("id", "published", "tickers", "source", "title", "text from"):
        table.add_column(column, overflow="fold")
    for story_id, published, tickers, source, title, origin, duplicate_of in rows:
        origin_label = f"copy of {duplicate_of}" if duplicate_of else origin
        table.add_row(str(story_id), _when(published), ",".join(tickers), source or "", title or "", origin_label)
    console.print(table)
    if not rows:
        console.print("no articles in that window")


@app.command()
def demo(
    keep: Annotated[Path | None, typer.Option(help="Keep the demo database at this path.")] = None,
    model: Annotated[bool, typer.Option(help="Also run the sentiment model on what was stored.")] = True,
) -> None:
    """Run the real pipeline offline, against a loopback server of bundled real Yahoo captures and article pages."""
    from monitor.demo.run import run_demo

    setup_logging("WARNING")
    run_demo(console, database=keep, with_model=model)


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


if __name__ == "__main__":
    app()
