"""Sentiment swings: a ticker's mean score over the latest window against its mean over the window before, from
the view ticker_sentiment (one row per article and ticker). A swing at or past the threshold, with enough recent
articles and no alert in the same direction during the cooldown, is recorded in the alerts table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import duckdb

HEADLINES = 3  # recent articles quoted in an alert: those that moved the score most in its direction


@dataclass(frozen=True)
class SwingRule:
    window: timedelta  # the latest news
    baseline: timedelta  # the window just before it: the ticker's usual tone
    min_articles: int  # in the latest window
    threshold: float  # |recent mean - baseline mean|, scores being in [-1, 1]
    cooldown: timedelta  # no second alert for a ticker in the same direction within this time


@dataclass(frozen=True)
class Headline:
    title: str
    url: str
    score: float


@dataclass(frozen=True)
class Alert:
    id: int
    ticker: str
    direction: str  # "up" or "down"
    fired_at: datetime
    recent_score: float
    recent_articles: int
    baseline_score: float
    baseline_articles: int
    message: str
    headlines: tuple[Headline, ...]

    def payload(self) -> dict[str, Any]:
        """The JSON sent to a webhook or command; "text" is what a Slack incoming webhook shows."""
        fields = asdict(self)
        fields["fired_at"] = self.fired_at.isoformat()
        return {"text": fields.pop("message"), **fields}


@dataclass(frozen=True)
class Swing:
    ticker: str
    recent_score: float
    recent_articles: int
    baseline_score: float  # 0 when the baseline window holds no article
    baseline_articles: int

    @property
    def change(self) -> float:
        return self.recent_score - self.baseline_score

    def alerts_under(self, rule: SwingRule) -> bool:
        return self.recent_articles >= rule.min_articles and abs(self.change) >= rule.threshold


def swings(
    conn: duckdb.DuckDBPyConnection, now: datetime, window: timedelta, baseline: timedelta,
    tickers: list[str] | None = None,
) -> list[Swing]:  # fmt: skip
    """Each ticker with news in the `window` before `now` (only `tickers`, if given): its mean score there against
    the `baseline` before it, by ticker."""
    recent_start = now - window
    rows = conn.execute(
        """
        SELECT ticker,
               avg(score) FILTER (recent), count(*) FILTER (recent),
               coalesce(avg(score) FILTER (NOT recent), 0), count(*) FILTER (NOT recent)
        FROM (SELECT ticker, score, news_time, news_time > $recent_start AS recent FROM ticker_sentiment)
        WHERE ($tickers IS NULL OR list_contains($tickers, ticker))
              AND news_time > $baseline_start AND news_time <= $now
        GROUP BY ticker HAVING count(*) FILTER (recent) > 0 ORDER BY ticker
        """,
        {"tickers": tickers, "recent_start": recent_start, "baseline_start": recent_start - baseline, "now": now},
    ).fetchall()
    return [Swing(*row) for row in rows]


def fire_swing_alerts(
    conn: duckdb.DuckDBPyConnection, tickers: list[str], now: datetime, rule: SwingRule
) -> list[Alert]:
    """Check `tickers` and record an alert for each that swung; run inside one write transaction."""
    fired = []
    for swing in swings(conn, now, rule.window, rule.baseline, tickers):
        if not swing.alerts_under(rule):
            continue
        direction = "up" if swing.change > 0 else "down"
        if _alerted_lately(conn, swing.ticker, direction, now - rule.cooldown):
            continue
        message = _message(swing, direction, rule)
        scores = [swing.recent_score, swing.recent_articles, swing.baseline_score, swing.baseline_articles]
        [(alert_id,)] = conn.execute(
            "INSERT INTO alerts (ticker, direction, fired_at, recent_score, recent_articles, baseline_score, "
            "baseline_articles, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            [swing.ticker, direction, now, *scores, message],
        ).fetchall()
        headlines = _headlines(conn, swing.ticker, direction, now - rule.window, now)
        fired.append(Alert(alert_id, swing.ticker, direction, now, *scores, message, headlines))
    return fired


def undelivered_alerts(conn: duckdb.DuckDBPyConnection, since: datetime, window: timedelta) -> list[Alert]:
    """Alerts fired after `since` that neither reached their targets nor failed to: the daemon stopped while
    sending them, or had no target then. `window` is the rule's, for their headlines."""
    rows = conn.execute(
        "SELECT id, ticker, direction, fired_at, recent_score, recent_articles, baseline_score, baseline_articles, "
        "message FROM alerts WHERE fired_at > ? AND delivered_at IS NULL AND delivery_error IS NULL ORDER BY id",
        [since],
    ).fetchall()
    return [Alert(*row, headlines=_headlines(conn, row[1], row[2], row[3] - window, row[3])) for row in rows]


def record_delivery(conn: duckdb.DuckDBPyConnection, alert_id: int, now: datetime, error: str | None) -> None:
    conn.execute(
        "UPDATE alerts SET delivered_at = ?, delivery_error = ? WHERE id = ?",
        [None if error else now, error, alert_id],
    )


def recent_alerts(conn: duckdb.DuckDBPyConnection, *, since: timedelta, ticker: str | None = None) -> list[tuple]:
    """(fired_at, ticker, message, delivered_at, delivery_error), newest first."""
    return conn.execute(
        """
        SELECT fired_at, ticker, message, delivered_at, delivery_error FROM alerts
        WHERE fired_at >= now() - ?::INTERVAL AND (?::VARCHAR IS NULL OR ticker = ?::VARCHAR)
        ORDER BY fired_at DESC, id DESC
        """,
        [since, ticker, ticker],
    ).fetchall()


def _alerted_lately(conn: duckdb.DuckDBPyConnection, ticker: str, direction: str, since: datetime) -> bool:
    return bool(conn.execute(
        "SELECT count(*) FROM alerts WHERE ticker = ? AND direction = ? AND fired_at > ?", [ticker, direction, since]
    ).fetchone()[0])  # fmt: skip


def _headlines(
    conn: duckdb.DuckDBPyConnection, ticker: str, direction: str, since: datetime, now: datetime
) -> tuple[Headline, ...]:
    order = "DESC" if direction == "up" else "ASC"
    rows = conn.execute(
        f"""
        SELECT coalesce(a.title, ''), a.url, t.score
        FROM ticker_sentiment t JOIN articles a ON a.id = t.article_id
        WHERE t.ticker = ? AND t.news_time > ? AND t.news_time <= ?
        ORDER BY t.score {order}, t.article_id LIMIT {HEADLINES}
        """,
        [ticker, since, now],
    ).fetchall()
    return tuple(Headline(*row) for row in rows)


def _message(swing: Swing, direction: str, rule: SwingRule) -> str:
    before = (f"no news in the {span_text(rule.baseline)} before (taken as 0)" if not swing.baseline_articles
              else f"{swing.baseline_score:+.2f} over the {span_text(rule.baseline)} before "
                   f"({swing.baseline_articles} articles)")  # fmt: skip
    verb = "rose" if direction == "up" else "fell"
    return (f"{swing.ticker} news sentiment {verb}: {swing.recent_score:+.2f} over the last "
            f"{span_text(rule.window)} ({swing.recent_articles} articles) against {before}")  # fmt: skip


def span_text(duration: timedelta) -> str:
    hours = duration.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 48 and hours % 24 == 0 else f"{hours:g} h"
