"""Read-side SQL: what the CLI shows and what the daemon reloads after a restart. Each takes an open connection."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb

from storage.writes import StoryRef


_ANALYZABLE = "s.state <> 'pending' AND s.duplicate_of IS NULL"  # stored text, not a near copy of another story


def stories_to_fetch(conn: duckdb.DuckDBPyConnection, now: datetime) -> list[StoryRef]:
    """Accepted but never processed (e.g. the daemon stopped or crashed), or due for a page retry."""
    refs = _versioned_refs(
        conn,
        "s.state = 'pending' OR (s.state = 'feed' AND s.next_fetch_at IS NOT NULL AND s.next_fetch_at <= ?)",
        [now],
    )
    return [ref for ref, _ in refs]


def analysis_backlog(conn: duckdb.DuckDBPyConnection) -> list[tuple[StoryRef, int, str | None, str]]:
    """Stored stories whose current content has no analysis yet, oldest first: (story, content version, title,
    text to analyze)."""
    pending = _versioned_refs(
        conn,
        f"{_ANALYZABLE} AND NOT EXISTS "
        "(SELECT 1 FROM analyses a WHERE a.story_id = s.id AND a.content_version = s.content_version)",
        [],
    )
    texts = story_texts(conn, [ref.id for ref, _ in pending])
    return [(ref, version, *texts[ref.id]) for ref, version in pending]


def stories_since(conn: duckdb.DuckDBPyConnection, since: datetime) -> list[tuple[StoryRef, int]]:
    """Stored, non-duplicate stories first seen since `since`, with their content version (for re-analysis)."""
    return _versioned_refs(conn, f"{_ANALYZABLE} AND s.first_seen_at >= ?", [since])


def story_texts(conn: duckdb.DuckDBPyConnection, story_ids: list[int]) -> dict[int, tuple[str | None, str]]:
    """Story id -> (title, text) to analyze: the page body when we have it, else the feed's description."""
    rows = conn.execute(
        "SELECT id, coalesce(title, feed_title), coalesce(body, feed_summary, '') FROM stories "
        "WHERE id IN (SELECT unnest(?))",
        [story_ids],
    ).fetchall()
    return {story_id: (title, text) for story_id, title, text in rows}


def recent_fingerprints(conn: duckdb.DuckDBPyConnection, since: datetime) -> list[tuple[int, int]]:
    return conn.execute(
        "SELECT id, simhash FROM stories WHERE simhash IS NOT NULL AND duplicate_of IS NULL AND first_seen_at >= ?",
        [since],
    ).fetchall()


def feed_validators(conn: duckdb.DuckDBPyConnection, url: str) -> tuple[str | None, str | None]:
    """(ETag, Last-Modified) of a feed's last answer, for the next conditional GET."""
    row = conn.execute("SELECT etag, last_modified FROM feeds WHERE url = ?", [url]).fetchone()
    return row or (None, None)


def feed_status(conn: duckdb.DuckDBPyConnection) -> list[tuple]:
    return conn.execute(
        "SELECT url, tickers, last_polled_at, last_ok_at, consecutive_errors, last_error, items_seen, stories_new "
        "FROM feeds ORDER BY url"
    ).fetchall()


def counts(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    row = conn.execute(
        """
        SELECT count(*),
               count(*) FILTER (WHERE state = 'pending'),
               count(*) FILTER (WHERE state = 'page'),
               count(*) FILTER (WHERE state = 'feed'),
               count(*) FILTER (WHERE state = 'feed' AND next_fetch_at IS NOT NULL),
               count(*) FILTER (WHERE duplicate_of IS NOT NULL),
               (SELECT count(*) FROM analyses WHERE ok),
               (SELECT count(*) FROM analyses WHERE NOT ok),
               (SELECT count(*) FROM extractions),
               (SELECT count(*) FROM alerts),
               (SELECT count(*) FROM alerts WHERE delivery_error IS NOT NULL)
        FROM stories
        """
    ).fetchone()
    keys = [
        "stories", "pending", "from_page", "feed_text_only", "page_retry_scheduled", "near_duplicates",
        "analyses_ok", "analyses_failed", "entity_extractions", "alerts", "alerts_undelivered",
    ]
    return dict(zip(keys, row))


def articles(
    conn: duckdb.DuckDBPyConnection, *, since: timedelta, ticker: str | None = None, limit: int = 50
) -> list[tuple]:
    return conn.execute(
        """
        SELECT id, published_at, tickers, source, title, body_origin, duplicate_of, url
        FROM articles
        WHERE coalesce(published_at, fetched_at) >= now() - ?::INTERVAL
          AND (?::VARCHAR IS NULL OR list_contains(tickers, ?::VARCHAR))
        ORDER BY coalesce(published_at, fetched_at) DESC LIMIT ?
        """,
        [since, ticker, ticker, limit],
    ).fetchall()


def _versioned_refs(conn: duckdb.DuckDBPyConnection, where: str, params: list) -> list[tuple[StoryRef, int]]:
    """Stories matching `where` (over `stories s`), oldest first, with their content version."""
    rows = conn.execute(
        f"""
        SELECT s.id, s.url, coalesce(s.feed_title, ''), coalesce(s.feed_summary, ''),
               coalesce((SELECT list(DISTINCT t.ticker) FROM story_tickers t WHERE t.story_id = s.id), []),
               s.content_version
        FROM stories s WHERE {where} ORDER BY s.id
        """,
        params,
    ).fetchall()
    return [
        (StoryRef(i, url, title, summary, tuple(tickers)), version)
        for i, url, title, summary, tickers, version in rows
    ]


def ticker_series(
    conn: duckdb.DuckDBPyConnection, ticker: str, *, since: timedelta, bucket: str
) -> list[tuple[datetime, float, int, int, int]]:
    """(bucket start, mean score, articles, positive, negative) for one ticker, oldest first; an article that
    names the company twice counts once (view ticker_sentiment)."""
    return conn.execute(
        """
        SELECT time_bucket(?::INTERVAL, news_time) AS bucket,
               avg(score), count(*), count(*) FILTER (WHERE polarity = '+'), count(*) FILTER (WHERE polarity = '-')
        FROM ticker_sentiment
        WHERE ticker = ? AND news_time >= now() - ?::INTERVAL
        GROUP BY bucket ORDER BY bucket
        """,
        [bucket, ticker, since],
    ).fetchall()
