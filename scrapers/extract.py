"""Main text and metadata of an article page, by trafilatura.

A plain function of picklable values, so the pipeline can run it in a process pool.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import trafilatura

_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # time of day as well, when the page gives one
# trafilatura falls back to any text it finds (menus, error notices); an RSS summary says more than that.
MIN_TEXT_CHARS = 200


@dataclass
class Extracted:
    text: str
    title: str | None
    published_at: datetime | None  # UTC; midnight when the page only gives a date
    author: str | None


def _parse_date(value: str | None) -> datetime | None:
    """UTC from _DATE_FORMAT output, whose %z is empty when the page gave no time zone (taken as UTC)."""
    if not value:
        return None
    when = datetime.fromisoformat(value)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def extract_article(html: str, url: str) -> Extracted | None:
    """The article in `html` (fetched from `url`), or None when the page has no main text of MIN_TEXT_CHARS."""
    # Built per call: dates after max_date are refused, and a long-running daemon must not freeze "today".
    # A day ahead of UTC, for pages dated in time zones east of it.
    date_params = {
        "original_date": True,
        "extensive_search": True,
        "max_date": (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d"),
        "outputformat": _DATE_FORMAT,
    }
    doc = trafilatura.bare_extraction(
        html, url=url, with_metadata=True, include_comments=False, date_extraction_params=date_params
    )
    text = (doc.text or "").strip() if doc is not None else ""
    if len(text) < MIN_TEXT_CHARS:
        return None
    return Extracted(
        text=text,
        title=doc.title or None,
        published_at=_parse_date(doc.date),
        author=doc.author or None,
    )
