"""Yahoo Finance headline feeds (RSS 2.0) to FeedItems, with conditional GETs so unchanged feeds cost nothing."""

import asyncio
import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from time import struct_time

import feedparser
import lxml.html

from scrapers.canonical import canonical_url
from scrapers.fetch import HTML_TYPES, parse_content_type
from scrapers.http import HttpClient

_FEED_ACCEPT = "application/rss+xml,application/atom+xml;q=0.9,application/xml;q=0.8,text/xml;q=0.8,*/*;q=0.1"
_FEED_STARTS = (b"<?xml", b"<rss", b"<feed", b"<rdf:rdf")
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class FeedItem:
    url: str
    canonical_url: str
    guid: str | None
    title: str
    summary: str  # plain text
    published_at: datetime | None  # UTC
    tickers: tuple[str, ...]  # the tickers of the feed it came from: a hint, not a finding
    feed_url: str


class FeedError(Exception):
    """A feed answered, but not with a feed we can read."""

    def __init__(self, feed_url: str, reason: str) -> None:
        super().__init__(f"{feed_url}: {reason}")
        self.feed_url = feed_url
        self.reason = reason


@dataclass
class FeedPoll:
    items: list[FeedItem]
    not_modified: bool
    etag: str | None
    last_modified: str | None
    warning: str | None  # set when a malformed feed still gave items, or items had to be skipped


def _is_html(body: bytes, content_type: str | None) -> bool:
    head = body[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(_FEED_STARTS):  # some servers label their feeds text/html
        return False
    return head.startswith((b"<!doctype html", b"<html")) or parse_content_type(content_type)[0] in HTML_TYPES


def _plain_text(markup: str) -> str:
    """Feed titles and descriptions may carry HTML; the model and the terminal want plain words."""
    markup = _CONTROL_CHARS.sub(" ", markup)  # lxml refuses them, and they mean nothing here
    if not markup.strip():
        return ""
    return " ".join(lxml.html.fragment_fromstring(markup, create_parent="div").text_content().split())


def _utc(parsed: struct_time | None) -> datetime | None:
    # feedparser hands back dates already converted to UTC
    return datetime(*parsed[:6], tzinfo=UTC) if parsed else None


def _to_item(entry: feedparser.FeedParserDict, feed_url: str, tickers: tuple[str, ...]) -> FeedItem | None:
    link = entry.get("link", "").strip()
    try:
        canonical = canonical_url(link)
    except ValueError:
        return None
    return FeedItem(
        url=link,
        canonical_url=canonical,
        guid=entry.get("id") or None,
        title=_plain_text(entry.get("title", "")),
        summary=_plain_text(entry.get("summary", "")),
        published_at=_utc(entry.get("published_parsed") or entry.get("updated_parsed")),
        tickers=tickers,
        feed_url=feed_url,
    )


def parse_feed(
    body: bytes, *, content_type: str | None, feed_url: str, tickers: tuple[str, ...]
) -> tuple[list[FeedItem], str | None]:
    """Items of an RSS/Atom document, and a warning when it was malformed or had items without a usable link.

    Raises FeedError for an empty body, for HTML (Yahoo's consent page is HTML) and for anything feedparser
    cannot get a single entry out of.
    """
    if not body.strip():
        raise FeedError(feed_url, "served an empty body where RSS was expected")
    if _is_html(body, content_type):
        raise FeedError(feed_url, "served HTML (consent page?) where RSS was expected")
    headers = {"content-location": feed_url, **({"content-type": content_type} if content_type else {})}
    # A stream, never bytes or str: feedparser would treat a body that looks like a URL as one and fetch it.
    parsed = feedparser.parse(io.BytesIO(body), response_headers=headers)
    if not parsed.entries and (parsed.bozo or not parsed.version):
        problem = parsed.get("bozo_exception") or "no RSS or Atom elements"
        raise FeedError(feed_url, f"served nothing readable as RSS/Atom: {problem}")

    items = [item for entry in parsed.entries if (item := _to_item(entry, feed_url, tickers)) is not None]
    problems = []
    # ThingsNobodyCaresAboutButMe: feedparser's own name for benign notes (charset label overridden, ...).
    if parsed.bozo and not isinstance(parsed.bozo_exception, feedparser.ThingsNobodyCaresAboutButMe):
        problems.append(f"malformed feed, read {len(parsed.entries)} entries anyway: {parsed.bozo_exception}")
    if skipped := len(parsed.entries) - len(items):
        problems.append(f"skipped {skipped} of {len(parsed.entries)} entries without an http(s) link")
    return items, "; ".join(problems) or None


async def poll_feed(
    client: HttpClient, feed_url: str, tickers: tuple[str, ...], *, etag: str | None, last_modified: str | None
) -> FeedPoll:
    """Conditional GET of a feed: not_modified=True (and no items) when the server answers 304.

    Raises FetchError when the feed cannot be fetched and FeedError when what came back is not a feed.
    """
    headers = {"Accept": _FEED_ACCEPT}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    resp = await client.get(feed_url, headers=headers)
    if resp.status == 304:
        etag, last_modified = resp.headers.get("ETag", etag), resp.headers.get("Last-Modified", last_modified)
        return FeedPoll([], True, etag, last_modified, None)
    content_type = resp.headers.get("Content-Type")
    try:
        # In a thread: feedparser takes ~0.6 ms an item, over a second for a batch of a few hundred tickers.
        items, warning = await asyncio.to_thread(
            parse_feed, resp.body, content_type=content_type, feed_url=feed_url, tickers=tickers
        )
    except FeedError as exc:
        if resp.final_url == feed_url:
            raise
        raise FeedError(feed_url, f"redirected to {resp.final_url}, which {exc.reason}") from None
    return FeedPoll(items, False, resp.headers.get("ETag"), resp.headers.get("Last-Modified"), warning)
