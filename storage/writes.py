"""The write operations. Each takes an open transaction; the single writer (storage/writer.py) batches them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import duckdb

if TYPE_CHECKING:
    from model.analyzer import AnalysisResult
    from scrapers.feeds import FeedItem


@dataclass(frozen=True)
class StoryRef:
    """What the pipeline needs to carry a story through fetch, extract and analyze."""

    id: int
    url: str
    title: str
    summary: str
    tickers: tuple[str, ...]


def accept_items(conn: duckdb.DuckDBPyConnection, items: Sequence[FeedItem], now: datetime) -> list[StoryRef]:
    """Record feed items; returns the stories seen for the first time. A story already known (same canonical URL
    or guid) only gains the item's tickers, so the same story in several tickers' feeds is one story."""
    known = _known_story_ids(conn, items)
    first_items: dict[str, FeedItem] = {}  # canonical URL -> first item of a story new in this batch
    owner: list[tuple[FeedItem, int | str]] = []  # each item with its story: an id, or the canonical URL of a new one
    for item in items:
        story = known.get(item.canonical_url) or known.get(f"guid:{item.guid}")
        if story is None:
            first_items.setdefault(item.canonical_url, item)
            story = item.canonical_url
            if item.guid:
                known.setdefault(f"guid:{item.guid}", story)
        owner.append((item, story))

    ids: dict[str, int] = {}
    if first_items:
        rows = [(i.canonical_url, i.url, i.guid, i.title, i.summary, i.published_at, now) for i in first_items.values()]
        placeholders = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(rows))
        returned = conn.execute(
            "INSERT INTO stories (canonical_url, url, guid, feed_title, feed_summary, published_at, first_seen_at) "
            f"VALUES {placeholders} RETURNING id, canonical_url",
            [value for row in rows for value in row],
        ).fetchall()
        ids = {canonical: story_id for story_id, canonical in returned}
    links = [(ids.get(story, story), ticker, item.feed_url) for item, story in owner for ticker in item.tickers]
    _link_tickers(conn, links, now)
    return [
        StoryRef(
            ids[canonical],
            item.url,
            item.title,
            item.summary,
            tuple(dict.fromkeys(t for i, story in owner if story == canonical for t in i.tickers)),
        )
        for canonical, item in first_items.items()
    ]


def _known_story_ids(conn: duckdb.DuckDBPyConnection, items: Sequence[FeedItem]) -> dict[str, int]:
    urls = list({i.canonical_url for i in items})
    guids = list({i.guid for i in items if i.guid})
    rows = conn.execute(
        "SELECT id, canonical_url, guid FROM stories WHERE canonical_url IN (SELECT unnest(?)) "
        "OR guid IN (SELECT unnest(?))",
        [urls, guids],
    ).fetchall()
    known: dict[str, int] = {}
    for story_id, canonical, guid in rows:
        known[canonical] = story_id
        if guid:
            known[f"guid:{guid}"] = story_id
    return known


def _link_tickers(conn: duckdb.DuckDBPyConnection, links: list[tuple[int, str, str]], now: datetime) -> None:
    unique = list(dict.fromkeys((story_id, ticker) for story_id, ticker, _ in links))
    if not unique:
        return
    feed_of = {(story_id, ticker): feed for story_id, ticker, feed in links}
    conn.execute(
        "INSERT INTO story_tickers SELECT l.story_id, l.ticker, l.feed_url, ? FROM "
        "(SELECT unnest(?) AS story_id, unnest(?) AS ticker, unnest(?) AS feed_url) l "
        "WHERE NOT EXISTS (SELECT 1 FROM story_tickers t WHERE t.story_id = l.story_id AND t.ticker = l.ticker)",
        [now, [s for s, _ in unique], [t for _, t in unique], [feed_of[k] for k in unique]],
    )


def record_poll(
    conn: duckdb.DuckDBPyConnection,
    feed_url: str,
    tickers: Sequence[str],
    now: datetime,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    items_seen: int = 0,
    stories_new: int = 0,
    error: str | None = None,
) -> None:
    """Remember the outcome of one poll: validators for the next conditional GET, counts, and the last error."""
    conn.execute(
        """
        INSERT INTO feeds AS f (url, tickers, etag, last_modified, last_polled_at, last_ok_at, last_error,
                                consecutive_errors, items_seen, stories_new)
        VALUES ($url, $tickers, $etag, $lm, $now, CASE WHEN $error IS NULL THEN $now END, $error,
                CASE WHEN $error IS NULL THEN 0 ELSE 1 END, $seen, $new)
        ON CONFLICT (url) DO UPDATE SET
            tickers = excluded.tickers,
            etag = coalesce(excluded.etag, f.etag),
            last_modified = coalesce(excluded.last_modified, f.last_modified),
            last_polled_at = excluded.last_polled_at,
            last_ok_at = coalesce(excluded.last_ok_at, f.last_ok_at),
            last_error = excluded.last_error,
            consecutive_errors = CASE WHEN excluded.last_error IS NULL THEN 0 ELSE f.consecutive_errors + 1 END,
            items_seen = f.items_seen + excluded.items_seen,
            stories_new = f.stories_new + excluded.stories_new
        """,
        {
            "url": feed_url, "tickers": list(tickers), "etag": etag, "lm": last_modified, "now": now,
            "error": error, "seen": items_seen, "new": stories_new,
        },
    )


def store_page(
    conn: duckdb.DuckDBPyConnection,
    story_id: int,
    now: datetime,
    *,
    final_url: str,
    title: str | None,
    body: str,
    author: str | None,
    published_at: datetime | None,
    simhash: int | None,
    duplicate_of: int | None,
) -> int:
    """Store the extracted page; returns the story's new content version."""
    return conn.execute(
        """
        UPDATE stories SET state = 'page', final_url = ?, title = ?, body = ?, author = ?,
            published_at = coalesce(published_at, ?), fetched_at = ?, simhash = ?, duplicate_of = ?,
            next_fetch_at = NULL, last_error = NULL, fetch_attempts = fetch_attempts + 1,
            content_version = content_version + 1
        WHERE id = ? RETURNING content_version
        """,
        [final_url, title, body, author, published_at, now, simhash, duplicate_of, story_id],
    ).fetchone()[0]


def record_fetch_failure(
    conn: duckdb.DuckDBPyConnection, story_id: int, now: datetime, *, error: str, retry_at: datetime | None
) -> tuple[int, bool]:
    """Keep the feed's title and description as the story's text (first failure only) and schedule the retry.
    Returns (content version, whether the feed text became the story's content just now)."""
    state, version = conn.execute(
        """
        UPDATE stories SET
            content_version = content_version + CASE WHEN state = 'pending' THEN 1 ELSE 0 END,
            state = CASE WHEN state = 'pending' THEN 'feed' ELSE state END,
            fetch_attempts = fetch_attempts + 1, next_fetch_at = ?, last_error = ?, fetched_at = ?
        WHERE id = ? RETURNING state, content_version
        """,
        [retry_at, error, now, story_id],
    ).fetchone()
    return version, state == "feed" and version == 1


def store_analysis(
    conn: duckdb.DuckDBPyConnection, story_id: int, content_version: int, result: AnalysisResult, now: datetime
) -> int:
    analysis_id = conn.execute(
        """
        INSERT INTO analyses (story_id, content_version, analyzed_at, model, adapter, prompt_version, ok, error,
                              raw_output, attempts, latency_ms, prompt_tokens, completion_tokens)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id
        """,
        [
            story_id, content_version, now, result.model, result.adapter, result.prompt_version, result.ok,
            result.error, result.raw_output, result.attempts, result.latency_ms, result.prompt_tokens,
            result.completion_tokens,
        ],
    ).fetchone()[0]
    if result.entities:
        rows = [
            (analysis_id, story_id, position, e.entity, e.ticker, e.polarity, e.category, e.score, e.confidence)
            for position, e in enumerate(result.entities)
        ]
        placeholders = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows))
        conn.execute(f"INSERT INTO extractions VALUES {placeholders}", [v for row in rows for v in row])
    return analysis_id
