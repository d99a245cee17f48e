"""Reviews of the model's extractions: what is waiting for review, the decisions, the reviewed examples.

Each function takes an open connection. The review session runs beside the daemon, so it writes one decision per
short transaction (storage/db.py) and never holds the file while a person thinks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import duckdb

DECISIONS = ("accepted", "corrected", "skipped")


@dataclass(frozen=True)
class PredictedEntity:
    entity: str
    polarity: str
    category: str
    ticker: str | None
    confidence: float


@dataclass(frozen=True)
class QueuedAnalysis:
    """The newest analysis of a story nobody has reviewed yet."""

    story_id: int
    analysis_id: int
    record_id: str
    title: str | None
    body: str
    ok: bool
    error: str | None
    adapter: str | None
    entities: tuple[PredictedEntity, ...]

    @property
    def min_confidence(self) -> float:
        return min((e.confidence for e in self.entities), default=0.0)


@dataclass(frozen=True)
class Review:
    record_id: str
    text: str
    extractions: list[dict[str, str]]  # [{"entity", "polarity", "category"}]
    decision: str
    reviewer: str
    story_id: int | None = None
    analysis_id: int | None = None


@dataclass(frozen=True)
class ReviewedExample:
    review_id: int
    record_id: str
    text: str
    extractions: list[dict[str, str]]


def review_queue(conn: duckdb.DuckDBPyConnection, since: datetime, limit: int) -> list[QueuedAnalysis]:
    """Unreviewed stories first seen since `since`, newest analysis of their current text, least confident first
    (the lowest confidence over an analysis's entities; an analysis with no entity or a failed one counts as 0)."""
    rows = conn.execute(
        """
        WITH latest AS (
            SELECT a.id, a.story_id, a.ok, a.error, a.adapter,
                   'news-' || left(sha256(s.canonical_url), 16) AS record_id  -- the same in every database
            FROM analyses a
            JOIN stories s ON s.id = a.story_id AND s.content_version = a.content_version
            WHERE s.duplicate_of IS NULL AND s.first_seen_at >= ?
              AND trim(concat(s.title, s.feed_title, s.body, s.feed_summary)) <> ''  -- something to read
            QUALIFY row_number() OVER (PARTITION BY a.story_id ORDER BY a.id DESC) = 1
        )
        SELECT l.story_id, l.id, l.record_id,
               coalesce(s.title, s.feed_title), coalesce(s.body, s.feed_summary, ''), l.ok, l.error, l.adapter
        FROM latest l JOIN stories s ON s.id = l.story_id
        WHERE NOT EXISTS (SELECT 1 FROM reviews r WHERE r.story_id = l.story_id OR r.record_id = l.record_id)
        ORDER BY coalesce((SELECT min(e.confidence) FROM extractions e WHERE e.analysis_id = l.id), 0), l.id DESC
        LIMIT ?
        """,
        [since, limit],
    ).fetchall()
    entities: dict[int, list[PredictedEntity]] = {}
    for analysis_id, *fields in conn.execute(
        "SELECT analysis_id, entity, polarity, category, ticker, confidence FROM extractions "
        "WHERE analysis_id IN (SELECT unnest(?)) ORDER BY analysis_id, position",
        [[row[1] for row in rows]],
    ).fetchall():
        entities.setdefault(analysis_id, []).append(PredictedEntity(*fields))
    return [
        QueuedAnalysis(story_id, analysis_id, record_id, title, body, ok, error, adapter,
                       tuple(entities.get(analysis_id, ())))
        for story_id, analysis_id, record_id, title, body, ok, error, adapter in rows
    ]  # fmt: skip


def store_review(conn: duckdb.DuckDBPyConnection, review: Review, now: datetime) -> int:
    if review.decision not in DECISIONS:
        raise ValueError(f"decision {review.decision!r} is not one of {', '.join(DECISIONS)}")
    return conn.execute(
        "INSERT INTO reviews (record_id, story_id, analysis_id, text, extractions, decision, reviewer, reviewed_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        [review.record_id, review.story_id, review.analysis_id, review.text, json.dumps(review.extractions),
         review.decision, review.reviewer, now],
    ).fetchone()[0]  # fmt: skip


def reviewed_examples(conn: duckdb.DuckDBPyConnection) -> list[ReviewedExample]:
    """The newest decision of every reviewed record, skips left out, oldest first."""
    rows = conn.execute("SELECT id, record_id, text, extractions FROM reviewed_examples ORDER BY id").fetchall()
    return [ReviewedExample(review_id, record_id, text, json.loads(data)) for review_id, record_id, text, data in rows]


def count_new_reviews(conn: duckdb.DuckDBPyConnection, after_id: int) -> int:
    """Reviewed examples decided after review `after_id` (the newest one the last adapter was trained with)."""
    return conn.execute("SELECT count(*) FROM reviewed_examples WHERE id > ?", [after_id]).fetchone()[0]


def import_reviews(
    conn: duckdb.DuckDBPyConnection, reviews: Sequence[Review], now: datetime
) -> tuple[int, int]:
    """Store reviews brought in from a file; one whose record already reads the same is left out (a file
    imported twice adds nothing). Returns (added, unchanged)."""
    current = {
        record_id: (text, json.loads(data))
        for record_id, text, data in conn.execute(
            "SELECT record_id, text, extractions FROM reviewed_examples WHERE record_id IN (SELECT unnest(?))",
            [[review.record_id for review in reviews]],
        ).fetchall()
    }
    added = [r for r in reviews if current.get(r.record_id) != (r.text, r.extractions)]
    for review in added:
        store_review(conn, review, now)
    return len(added), len(reviews) - len(added)


def adapter_usage(conn: duckdb.DuckDBPyConnection) -> dict[str | None, tuple[int, float | None]]:
    """Adapter file (None: base model) -> (analyses run with it, share of its reviewed answers kept unchanged)."""
    rows = conn.execute("SELECT adapter, analyses, accepted_rate FROM adapter_usage").fetchall()
    return {adapter: (analyses, kept) for adapter, analyses, kept in rows}
