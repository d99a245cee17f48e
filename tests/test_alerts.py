"""Sentiment-swing alerts: detection on a real DuckDB file, delivery to a real loopback webhook and a real command,
and the daemon's alert stage after the real embedded model analyzed a real article."""

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from typer.testing import CliRunner

from monitor.alerts import AlertSender
from monitor.analysis import build_analyzer
from monitor.cli import app
from monitor.config import AlertSettings, Config, ConfigError, PipelineSettings, load_config
from monitor.daemon import run_daemon
from monitor.demo.server import FixtureServer
from scrapers.canonical import canonical_url
from scrapers.feeds import FeedItem
from storage import alerts, writes
from storage.alerts import SwingRule
from storage.db import Database
from helpers import add_feed_of_pages

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
RULE = SwingRule(window=timedelta(hours=24), baseline=timedelta(days=7), min_articles=3, threshold=0.5,
                 cooldown=timedelta(hours=6))  # fmt: skip


def add_article(
    conn, ticker: str, score: float, hours_ago: float, title: str = "a headline", at: datetime = NOW
) -> None:
    """A stored article published `hours_ago` before `at` whose newest analysis gave `ticker` this score."""
    url = f"https://news.example/{ticker}/{hours_ago}/{score}"
    published = at - timedelta(hours=hours_ago)
    item = FeedItem(url=url, canonical_url=canonical_url(url), guid=None, title=title, summary="",
                    published_at=published, tickers=(ticker,), feed_url="http://feeds/x")  # fmt: skip
    [story] = writes.accept_items(conn, [item], published)
    conn.execute("UPDATE stories SET state = 'page' WHERE id = ?", [story.id])
    [(analysis_id,)] = conn.execute(
        "INSERT INTO analyses (story_id, content_version, analyzed_at, model, prompt_version, ok, attempts) "
        "VALUES (?, 1, ?, 'm', '1', true, 1) RETURNING id", [story.id, published]).fetchall()  # fmt: skip
    polarity = "+" if score > 0 else "-" if score < 0 else "0"
    conn.execute("INSERT INTO extractions VALUES (?, ?, 0, ?, ?, ?, 'Business', ?, 0.9)",
                 [analysis_id, story.id, ticker, ticker, polarity, score])  # fmt: skip


def check(db: Database, *tickers: str, at: datetime = NOW, rule: SwingRule = RULE) -> list[alerts.Alert]:
    with db.write() as conn:
        return alerts.fire_swing_alerts(conn, list(tickers), at, rule)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "s.duckdb")


def test_a_swing_past_the_threshold_fires_once_per_direction_and_cooldown(db: Database) -> None:
    with db.write() as conn:
        for hours_ago in (30, 50, 100):  # the week before: mildly good
            add_article(conn, "ACME", 0.3, hours_ago)
        for hours_ago, score, title in ((1, -0.9, "ACME sued"), (2, -0.7, "ACME misses"), (3, -0.2, "ACME flat")):
            add_article(conn, "ACME", score, hours_ago, title)
        add_article(conn, "ACME", 0.9, 24 * 30)  # older than the baseline window: not counted
    [alert] = check(db, "ACME")
    assert (alert.ticker, alert.direction, alert.recent_articles, alert.baseline_articles) == ("ACME", "down", 3, 3)
    assert alert.recent_score == pytest.approx(-0.6) and alert.baseline_score == pytest.approx(0.3)
    assert alert.message == ("ACME news sentiment fell: -0.60 over the last 24 h (3 articles) against +0.30 "
                             "over the 7 days before (3 articles)")  # fmt: skip
    assert [h.title for h in alert.headlines] == ["ACME sued", "ACME misses", "ACME flat"]
    assert check(db, "ACME") == check(db, "ACME", at=NOW + timedelta(hours=5)) == []  # the cooldown
    [reminder] = check(db, "ACME", at=NOW + timedelta(hours=7))  # past it, and the swing still holds
    assert reminder.direction == "down"
    with db.write() as conn:  # a day later good news: the bad days are now the baseline
        for hours_ago in (-10, -20, -25):
            add_article(conn, "ACME", 1.0, hours_ago)
    [up] = check(db, "ACME", at=NOW + timedelta(hours=30))
    assert up.direction == "up" and up.baseline_articles == 6
    with db.read() as conn:
        listed = alerts.recent_alerts(conn, since=timedelta(days=99999), ticker="ACME")
    assert [message for _, _, message, _, _ in listed] == [up.message, reminder.message, alert.message]


def test_too_few_articles_or_too_small_a_swing_fire_nothing(db: Database) -> None:
    with db.write() as conn:
        add_article(conn, "FEW", -0.9, 1)
        add_article(conn, "FEW", -0.9, 2)  # two articles; three needed
        for hours_ago in (1, 2, 3):
            add_article(conn, "CALM", -0.3, hours_ago)
        add_article(conn, "CALM", 0.1, 40)  # a swing of 0.4 < 0.5
    assert check(db, "FEW", "CALM") == []


def test_without_earlier_news_the_baseline_is_neutral(db: Database) -> None:
    with db.write() as conn:
        for hours_ago in (1, 2, 3):
            add_article(conn, "NEW", 0.8, hours_ago)
    [alert] = check(db, "NEW", "OTHER")
    assert alert.direction == "up" and alert.baseline_articles == 0
    assert alert.message.endswith("against no news in the 7 days before (taken as 0)")


class Webhook:
    """A loopback stand-in for a Slack incoming webhook: records each POST and answers the next scripted status."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.received: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status == 200 else "invalid_payload",
                            headers={"Retry-After": "0"} if status in (429, 503) else None)  # fmt: skip


def webhook_server(hook: Webhook) -> FixtureServer:
    """A loopback server (not started yet) with `hook` at /hook."""
    server = FixtureServer(tickers=[])
    server.app.router.add_post("/hook", hook.handle)
    return server


def an_alert(db: Database) -> alerts.Alert:
    with db.write() as conn:
        for hours_ago in (1, 2, 3):
            add_article(conn, "ACME", -0.8, hours_ago, "ACME recalls trucks")
    [alert] = check(db, "ACME")
    return alert


async def test_the_webhook_gets_slack_text_and_the_fields_and_a_503_is_retried(db: Database, http_client) -> None:
    hook = Webhook(503, 200)
    async with webhook_server(hook) as server:
        error = await AlertSender(AlertSettings(webhook_url=server.base_url + "/hook"), http_client).send(
            alert := an_alert(db))
    assert error is None and len(hook.received) == 2
    body = hook.received[-1]
    assert body["text"] == alert.message and body["ticker"] == "ACME" and body["direction"] == "down"
    assert body["headlines"][0]["title"] == "ACME recalls trucks" and body["fired_at"] == NOW.isoformat()
    assert "message" not in body  # it is the "text"


async def test_a_refused_or_unreachable_webhook_is_reported_without_its_url(db: Database, http_client) -> None:
    hook = Webhook(400)
    alert = an_alert(db)
    async with webhook_server(hook) as server:
        refused = await AlertSender(AlertSettings(webhook_url=server.base_url + "/hook"), http_client).send(alert)
    unreachable = await AlertSender(AlertSettings(webhook_url="http://127.0.0.1:9/T0/B0/secret"), http_client).send(
        alert)
    assert refused == "webhook: HTTP 400 Bad Request" and len(hook.received) == 1  # a 400 is not retried
    assert unreachable.startswith("webhook: connection failed") and unreachable.endswith("(gave up after 4 attempts)")
    assert "secret" not in unreachable


async def test_the_command_reads_the_alert_on_stdin_and_its_failure_is_reported(
    db: Database, tmp_path: Path, http_client
) -> None:
    alert = an_alert(db)
    out = tmp_path / "alert.json"

    async def send(command: list[str]) -> str | None:
        return await AlertSender(AlertSettings(command=command), http_client).send(alert)

    assert await send([sys.executable, "-c", f"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())"]) is None
    assert json.loads(out.read_text())["text"] == alert.message
    failed = await send([sys.executable, "-c", "import sys; sys.exit('no route to pager')"])
    assert failed == f"command: {sys.executable} exited with status 1: no route to pager"
    assert (await send(["/no/such/notifier"])).startswith("command: cannot start '/no/such/notifier': No such file")


def test_bad_alert_settings_are_named(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text('[alerts]\nwebhook_url = "hooks.slack.com/x"\ncommand = []\nthreshhold = 1\n')
    with pytest.raises(ConfigError) as error:
        load_config(config)
    message = str(error.value)
    assert "alerts.webhook_url: must be an http:// or https:// URL" in message
    assert "alerts.command: must name the program first" in message
    assert "alerts.threshhold: unknown key (did you mean 'threshold'?)" in message


async def test_the_daemon_alerts_on_what_the_model_found_and_records_delivery(db_path, fast_settings) -> None:
    hook = Webhook()
    server = webhook_server(hook)
    feed = add_feed_of_pages(server, [3])  # the Barron's capture on Home Depot (HD)
    async with server:
        # every linked ticker of the one article swings from nothing: a window back to the 2020 captures, no
        # baseline to speak of, one article enough, any score but 0
        rule = AlertSettings(window_hours=24 * 365 * 30, baseline_hours=1, min_articles=1, threshold=0.01,
                             webhook_url=server.base_url + "/hook")  # fmt: skip
        config = Config(watchlist=[], extra_feeds=[server.base_url + feed], database=db_path, http=fast_settings,
                        pipeline=PipelineSettings(write_interval_seconds=0.05), alerts=rule)  # fmt: skip
        summary = await run_daemon(config, once=True, analyzer=build_analyzer(config))
    with Database(db_path).read() as conn:
        swung = {t for (t,) in conn.execute("SELECT ticker FROM ticker_sentiment WHERE abs(score) >= 0.01").fetchall()}
        fired = conn.execute("SELECT ticker, message, delivered_at IS NOT NULL, delivery_error FROM alerts").fetchall()
    assert swung, "the model linked no ticker in the article: nothing here would test the alert stage"
    assert {row[0] for row in fired} == swung and summary.stats.alerts == len(fired) == len(swung)
    assert all(delivered and error is None for *_, delivered, error in fired)
    assert sorted(body["text"] for body in hook.received) == sorted(row[1] for row in fired)
    config_file = db_path.parent / "s.toml"
    config_file.write_text(f'database = "{db_path}"\n')
    runner = CliRunner(env={"COLUMNS": "250"})
    listing = runner.invoke(app, ["alerts", "--config", str(config_file), "--since", "1d"])
    assert listing.exit_code == 0 and all(ticker in listing.output for ticker in swung)
    as_json = runner.invoke(app, ["alerts", "--config", str(config_file), "--format", "json"])
    assert sorted((a["ticker"], a["message"], a["delivery_error"]) for a in json.loads(as_json.stdout)) == sorted(
        (ticker, message, None) for ticker, message, *_ in fired
    )
    status = runner.invoke(app, ["status", "--config", str(config_file)])
    assert re.search(rf"│ alerts +│ {len(fired)} +│", status.output), status.output


async def test_a_restart_sends_what_a_stop_cut_short_and_checks_the_latest_news(db_path, fast_settings) -> None:
    db = Database(db_path)
    started = datetime.now(UTC)
    with db.write() as conn:
        for hours_ago in (1, 2, 3):  # analyses stored just before a stop: their swing check was still queued
            add_article(conn, "ACME", -0.8, hours_ago, "ACME recalls trucks", at=started)
            add_article(conn, "BETA", 0.9, hours_ago, "BETA wins contract", at=started)
        [cut_short] = alerts.fire_swing_alerts(conn, ["BETA"], started, RULE)  # recorded, never sent
        add_article(conn, "OLD", -0.9, 48, at=started)  # news outside the window: not checked
    hook = Webhook()
    server = webhook_server(hook)
    async with server:
        config = Config(watchlist=[], database=db_path, http=fast_settings,
                        pipeline=PipelineSettings(write_interval_seconds=0.05),
                        alerts=AlertSettings(webhook_url=server.base_url + "/hook"))  # fmt: skip
        summary = await run_daemon(config, once=True, analyzer=build_analyzer(config))
    sent = [(body["id"], body["ticker"]) for body in hook.received]
    assert sent == [(cut_short.id, "BETA"), (cut_short.id + 1, "ACME")]
    assert hook.received[0]["headlines"][0]["title"] == "BETA wins contract"
    assert summary.stats.alerts == 1, "BETA was counted by the run that fired it"
    with db.read() as conn:
        assert conn.execute("SELECT ticker FROM alerts WHERE delivered_at IS NOT NULL ORDER BY id").fetchall() == [
            ("BETA",), ("ACME",)]


def test_movers_ranks_tickers_by_how_far_their_sentiment_moved(db_path: Path) -> None:
    started = datetime.now(UTC)
    with Database(db_path).write() as conn:
        for hours_ago in (1, 2, 3):
            add_article(conn, "ACME", -0.8, hours_ago, at=started)  # fell from +0.4
            add_article(conn, "BETA", 0.3, hours_ago, at=started)  # rose a little from 0
        add_article(conn, "ACME", 0.4, 30, at=started)
        add_article(conn, "BETA", 0.0, 40, at=started)
        add_article(conn, "NEWC", 0.5, 2, at=started)  # no news before: baseline taken as 0
        add_article(conn, "QUIET", 1.0, 30, at=started)  # nothing in the latest window: not listed
    config = db_path.parent / "s.toml"
    config.write_text(f'database = "{db_path}"\n')
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["movers", "--config", str(config)])
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1:-1] for line in result.output.splitlines() if line.startswith("│")]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert cells == [["ACME", "3", "-0.80", "1", "+0.40", "-1.20", "swing"],
                     ["NEWC", "1", "+0.50", "0", "—", "+0.50", ""],  # past the threshold, but 1 article < 3
                     ["BETA", "3", "+0.30", "1", "+0.00", "+0.30", ""]]  # fmt: skip
    narrow = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["movers", "--config", str(config), "--window", "90m"])
    assert [line.split("│")[1].strip() for line in narrow.output.splitlines() if line.startswith("│")] == [
        "ACME", "BETA"]
    assert '"swing": past the [alerts] threshold' in result.output
    as_json = CliRunner().invoke(app, ["movers", "--config", str(config), "--format", "json", "--limit", "2"])
    assert [(m["ticker"], m["recent_articles"], m["baseline_articles"], round(m["change"], 2), m["swing"])
            for m in json.loads(as_json.stdout)] == [("ACME", 3, 1, -1.2, True), ("NEWC", 1, 0, 0.5, False)]  # fmt: skip
