"""The `sentimon` command line."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Table

from monitor.config import Config, ConfigError, config_path, load_config
from monitor.durations import parse_duration
from storage import alerts as alert_records
from storage import queries
from storage.alerts import span_text
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


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


FormatOption = Annotated[OutputFormat, typer.Option("--format", help="A table to read, or JSON for scripts.")]


def print_json(value: object) -> None:
    """JSON on stdout for scripts; times in ISO 8601."""
    print(json.dumps(value, indent=2, default=lambda value: value.isoformat()))


def as_records(fields: tuple[str, ...], rows: list[tuple]) -> list[dict]:
    return [dict(zip(fields, row, strict=True)) for row in rows]


def print_rows_json(fields: tuple[str, ...], rows: list[tuple]) -> None:
    print_json(as_records(fields, rows))


def fail(message: str, code: int = 2) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # messages quote [tables] and paths
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
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLevelName(level)))


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
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(default_config_text(), encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {target}: {exc.strerror or exc}") from None
    console.print(f"wrote {target}")


@app.command()
def run(
    config_file: ConfigOption = None,
    once: Annotated[bool, typer.Option("--once", help="Poll every feed once, process all that came in, exit.")] = False,
) -> None:
    """Run the daemon in the foreground (logs to stderr).

    SIGTERM or Ctrl-C stops it cleanly; SIGHUP re-reads the config (watchlist and feeds follow, no restart).
    """
    from monitor.daemon import run_daemon
    from monitor.metrics import MetricsError

    config = settings(config_file)
    setup_logging(config.log_level)
    analyzer = load_analyzer(config) if config.pipeline.analyze else None
    try:
        reload = partial(load_config, config_file)
        summary = asyncio.run(run_daemon(config, once=once, analyzer=analyzer, reload=reload))
    except (DatabaseError, MetricsError) as exc:
        raise fail(str(exc)) from None
    stats = summary.stats
    logging.getLogger("sentimon").info(
        "%s: %d polls (%d failed), %d new stories, %d pages stored, %d page failures, %d near copies, "
        "%d analyzed, %d analyses failed validation, %d alerts",
        "stopped" if summary.interrupted else "done", stats.polls, stats.poll_errors, stats.stories_new,
        stats.pages_stored, stats.page_failures, stats.near_duplicates, stats.analyzed, stats.analysis_failures, stats.alerts,
    )


def load_analyzer(config: Config, adapter: str = "current"):
    """The model, loaded before the daemon starts so that a missing model is a startup error, not a mid-run one."""
    from monitor.analysis import ModelUnavailable, build_analyzer

    try:
        return build_analyzer(config, adapter)
    except ModelUnavailable as exc:
        raise fail(str(exc)) from None


def open_database(config: Config) -> Database:
    return Database(config.database, lock_timeout=10.0)


@app.command()
def status(config_file: ConfigOption = None, output_format: FormatOption = OutputFormat.table) -> None:
    """Feeds, their last poll and errors, and what the database holds. Works while the daemon runs."""
    config = settings(config_file)
    try:
        with open_database(config).read() as conn:
            feeds = queries.feed_status(conn)
            totals = queries.counts(conn)
    except DatabaseError as exc:
        raise fail(str(exc)) from None
    if output_format is OutputFormat.json:
        fields = ("feed", "tickers", "last_poll", "last_ok", "consecutive_errors", "last_error", "items", "new")
        print_json({"feeds": as_records(fields, feeds), "database": totals})
        return
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
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows.")] = 50,
    output_format: FormatOption = OutputFormat.table,
) -> None:
    """Recent articles, newest first."""
    config = settings(config_file)
    window = duration(since)
    try:
        with open_database(config).read() as conn:
            rows = queries.articles(conn, since=window, ticker=ticker.upper() if ticker else None, limit=limit)
    except DatabaseError as exc:
        raise fail(str(exc)) from None
    if output_format is OutputFormat.json:
        print_rows_json(("id", "published_at", "tickers", "source", "title", "text_from", "duplicate_of", "url"), rows)
        return
    table = Table(title=f"articles since {since}" + (f" for {ticker.upper()}" if ticker else ""))
    for column in ("id", "published", "tickers", "source", "title", "text from"):
        table.add_column(column, overflow="fold")
    for story_id, published, tickers, source, title, origin, duplicate_of, _ in rows:
        origin_label = f"copy of {duplicate_of}" if duplicate_of else origin
        table.add_row(str(story_id), _when(published), ",".join(tickers), source or "", title or "", origin_label)
    console.print(table)
    if not rows:
        console.print("no articles in that window")


@app.command()
def alerts(
    config_file: ConfigOption = None,
    ticker: Annotated[str | None, typer.Option("--ticker", "-t", help="Only this ticker.")] = None,
    since: Since = "7d",
    output_format: FormatOption = OutputFormat.table,
) -> None:
    """Alerts fired on sentiment swings, newest first, and whether they were delivered."""
    config = settings(config_file)
    try:
        with open_database(config).read() as conn:
            rows = alert_records.recent_alerts(conn, since=duration(since), ticker=ticker.upper() if ticker else None)
    except DatabaseError as exc:
        raise fail(str(exc)) from None
    if output_format is OutputFormat.json:
        print_rows_json(("fired_at", "ticker", "message", "delivered_at", "delivery_error"), rows)
        return
    if not rows:
        console.print(f"no alerts in the last {since}")
        return
    table = Table(title=f"alerts since {since}" + (f" for {ticker.upper()}" if ticker else ""))
    for column in ("fired", "ticker", "alert", "delivered"):
        table.add_column(column, overflow="fold")
    for fired_at, symbol, message, delivered_at, error in rows:
        delivery = _when(delivered_at) if delivered_at else f"[red]{escape(error)}[/]" if error else "no target set"
        table.add_row(_when(fired_at), symbol, message, delivery)
    console.print(table)


@app.command()
def sentiment(
    ticker: Annotated[str, typer.Option("--ticker", "-t", help="The ticker.")],
    config_file: ConfigOption = None,
    since: Since = "7d",
    every: Annotated[str, typer.Option("--every", help="Bucket size: 1h, 1d, ...")] = "1d",
    plot: Annotated[Path | None, typer.Option(help="Also draw the series into this PNG file.")] = None,
    output_format: FormatOption = OutputFormat.table,
) -> None:
    """A ticker's sentiment over time: mean score and articles per bucket."""
    config = settings(config_file)
    window, bucket = duration(since), duration(every)
    try:
        with open_database(config).read() as conn:
            series = queries.ticker_series(conn, ticker.upper(), since=window, bucket=bucket)
    except DatabaseError as exc:
        raise fail(str(exc)) from None
    if output_format is OutputFormat.json:
        print_rows_json(("bucket", "score", "articles", "positive", "negative"), series)
    elif series:
        console.print(_series_table(f"{ticker.upper()} sentiment per {every}, last {since}", series))
    else:
        console.print(f"no sentiment for {ticker.upper()} in the last {since}")
    if plot and series:
        from monitor.plot import plot_series

        try:  # on stderr: stdout may be JSON
            errors.print(f"wrote {plot_series(ticker.upper(), series, plot)}")
        except RuntimeError as exc:
            raise fail(str(exc)) from None
        except OSError as exc:
            raise fail(f"cannot write {plot}: {exc.strerror or exc}") from None


def _series_table(title: str, series: list[tuple]) -> Table:
    table = Table(title=title)
    for column in ("from", "mean score", "", "articles", "+", "-"):
        table.add_column(column, justify="right" if column not in ("", "from") else "left")
    for start, score, articles, positive, negative in series:
        bar = "█" * round(abs(score) * 10)
        table.add_row(_when(start), f"{score:+.2f}", f"[{'green' if score >= 0 else 'red'}]{bar}[/]",
                      str(articles), str(positive), str(negative))  # fmt: skip
    return table


@app.command()
def movers(
    config_file: ConfigOption = None,
    window: Annotated[str | None, typer.Option(help="The latest news (default: \\[alerts] window_hours).")] = None,
    baseline: Annotated[str | None, typer.Option(help="Compared with (default: \\[alerts] baseline_hours).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many tickers.")] = 20,
    output_format: FormatOption = OutputFormat.table,
) -> None:
    """Tickers whose news sentiment moved most: the latest window's mean score against the one before it."""
    config = settings(config_file)
    rule = config.alerts.rule()
    recent = duration(window) if window else rule.window
    before = duration(baseline) if baseline else rule.baseline
    try:
        with open_database(config).read() as conn:
            moved = alert_records.swings(conn, datetime.now(UTC), recent, before)
    except DatabaseError as exc:
        raise fail(str(exc)) from None
    moved = sorted(moved, key=lambda swing: (-abs(swing.change), swing.ticker))[:limit]
    if output_format is OutputFormat.json:
        print_json([{**dataclasses.asdict(swing), "change": swing.change, "swing": swing.alerts_under(rule)}
                    for swing in moved])  # fmt: skip
        return
    if not moved:
        console.print(f"no sentiment in the last {span_text(recent)}")
        return
    table = Table(title=f"sentiment, last {span_text(recent)} against the {span_text(before)} before")
    for column in ("ticker", "articles", "score", "articles before", "score before", "change", ""):
        table.add_column(column, justify="left" if column in ("ticker", "") else "right")
    for swing in moved:
        colour = "green" if swing.change >= 0 else "red"
        table.add_row(
            swing.ticker, str(swing.recent_articles), f"{swing.recent_score:+.2f}", str(swing.baseline_articles),
            f"{swing.baseline_score:+.2f}" if swing.baseline_articles else "—", f"[{colour}]{swing.change:+.2f}[/]",
            "swing" if swing.alerts_under(rule) else "",
        )  # fmt: skip
    console.print(table)
    console.print('"swing": past the [alerts] threshold with enough articles (what the daemon alerts on)', markup=False)


@app.command()
def demo(
    keep: Annotated[Path | None, typer.Option(help="Keep the demo database at this path.")] = None,
    model: Annotated[bool, typer.Option(help="Also run the sentiment model on what was stored.")] = True,
) -> None:
    """Run the real pipeline offline, against a loopback server of bundled real Yahoo captures and article pages."""
    from monitor.demo.run import run_demo

    setup_logging("WARNING")
    run_demo(console, database=keep, with_model=model)


@app.command()
def analyze(
    text: Annotated[str, typer.Option("--text", help="The news text to analyze.")],
    config_file: ConfigOption = None,
    title: Annotated[str | None, typer.Option(help="Its headline, if separate.")] = None,
    output_format: FormatOption = OutputFormat.table,
) -> None:
    """Per-entity sentiment of one text, with the configured model."""
    config = settings(config_file)
    result = load_analyzer(config).analyze(text, title=title)
    if output_format is OutputFormat.json:
        print_json(dataclasses.asdict(result))
        return
    if not result.ok:
        raise fail(f"the model's output failed validation twice: {result.error}\nraw output: {result.raw_output}", 1)
    table = Table(title=f"{result.model}{' + ' + result.adapter if result.adapter else ''} ({result.latency_ms:.0f} ms)")
    for column in ("entity", "ticker", "polarity", "category", "score", "confidence"):
        table.add_column(column)
    for e in result.entities:
        table.add_row(e.entity, e.ticker or "", e.polarity, e.category, f"{e.score:+.2f}", f"{e.confidence:.2f}")
    console.print(table)


@app.command()
def reanalyze(
    config_file: ConfigOption = None,
    since: Since = "7d",
    batch: Annotated[int, typer.Option(min=1, help="Analyses written per database transaction.")] = 16,
) -> None:
    """Run the current model again over stored articles (after a model or adapter change).

    Safe while the daemon runs: short write transactions; the newest analysis of each article is the one shown.
    """
    from storage import writes

    config = settings(config_file)
    database = open_database(config)
    try:
        with database.read() as conn:
            stories = queries.stories_since(conn, datetime.now(UTC) - duration(since))
    except DatabaseError as exc:
        raise fail(str(exc)) from None
    if not stories:
        console.print(f"no stored articles in the last {since}")
        return
    analyzer = load_analyzer(config)
    failed = 0
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=console) as progress:
        task = progress.add_task("re-analyzing", total=len(stories))
        for start in range(0, len(stories), batch):
            chunk = stories[start : start + batch]
            with database.read() as conn:
                texts = queries.story_texts(conn, [story.id for story, _ in chunk])
            results = []
            for story, version in chunk:
                story_title, body = texts.get(story.id, (None, ""))
                results.append((story, version, analyzer.analyze(body, title=story_title, ticker_hints=story.tickers)))
                progress.advance(task)
            with database.write() as conn:
                stamp = datetime.now(UTC)
                for story, version, result in results:
                    writes.store_analysis(conn, story.id, version, result, stamp)
            failed += sum(not result.ok for _, _, result in results)
    console.print(f"re-analyzed {len(stories)} articles; {failed} outputs failed validation (kept with raw text)")


@app.command("eval")
def evaluate_model(
    data: Annotated[Path, typer.Option("--data", help="JSONL: ours ({id,text,extractions}) or FinEntity's format.")],
    config_file: ConfigOption = None,
    repeat: Annotated[
        int, typer.Option(min=1, help="Run every record this many times to measure output variance.")
    ] = 1,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N records.")] = None,
    output_format: FormatOption = OutputFormat.table,
    adapter: Annotated[
        str,
        typer.Option(help="current (what the daemon uses), base, bundled, a version (v003), a GGUF adapter file, or "
                         "with backend mlx an mlx-lm adapter folder."),
    ] = "current",
    predictions: Annotated[
        Path | None, typer.Option(help="Also write each record's gold and predicted entities to this JSONL file.")
    ] = None,
) -> None:
    """Score the configured model on a labeled dataset."""
    from model.evaluate import DatasetError, evaluate, load_records, render_table

    config = settings(config_file)
    try:
        records = load_records(data)[:limit]
    except (DatasetError, OSError) as exc:
        raise fail(str(exc)) from None
    analyzer = load_analyzer(config, adapter)
    used = analyzer.backend.adapter or "none (base model)"
    with (
        Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=errors) as progress,
        predictions.open("w", encoding="utf-8") if predictions else contextlib.nullcontext() as out,
    ):
        task = progress.add_task(f"evaluating {data.name} ({used})", total=len(records) * repeat)
        keep = (lambda record, result: out.write(_prediction_line(record, result))) if out else None
        report = evaluate(analyzer, records, repeat=repeat, on_result=keep,
                          progress=lambda done, total: progress.update(task, completed=done))  # fmt: skip
    if output_format is OutputFormat.json:
        print_json({"adapter": analyzer.backend.adapter, **report.to_json()})
    else:
        console.print(render_table(report))
        console.print(f"adapter: {used}")


def _prediction_line(record, result) -> str:
    """One record of `eval --predictions`: what the data says, what the model said."""
    gold = [{"entity": g.entity, "polarity": g.polarity, "category": g.category} for g in record.entities]
    said = [{"entity": e.entity, "polarity": e.polarity, "category": e.category, "score": round(e.score, 3)}
            for e in result.entities]  # fmt: skip
    return json.dumps({"id": record.id, "text": record.text, "gold": gold, "predicted": said, "ok": result.ok,
                       "error": result.error}, ensure_ascii=False) + "\n"  # fmt: skip


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


from monitor.training_commands import adapters_app, review_app, train  # noqa: E402 - they use the helpers above

app.add_typer(review_app, name="review")
app.add_typer(adapters_app, name="adapters")
app.command()(train)

if __name__ == "__main__":
    app()
