"""A loopback stand-in for Yahoo Finance's headline feed and the news sites behind it, serving real captures.

- `GET /rss/2.0/headline?s=A,B` answers like Yahoo: for a symbol with a capture (MSFT, 7203.T) its captured
  items, for any other symbol the five captured article pages as items (guid stable per symbol and story).
  One symbol with a capture gets the capture itself; several symbols get one channel with every symbol's
  items, so a story in two symbols' feeds appears twice, as on Yahoo. ETag/Last-Modified, 304 on a match.
- `GET /<original host>/<original path>` answers a captured article page. Item links point there:
  `https://finance.yahoo.com/news/x.html?.tsrc=rss` becomes
  `http://127.0.0.1:PORT/finance.yahoo.com/news/x.html?.tsrc=rss`.
  Links of the feed captures, whose pages were not captured, each stand for one of the five pages.
"""

import functools
import gzip
import hashlib
import json
import re
import textwrap
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from importlib.resources import files
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import lxml.html
from aiohttp import web

_DATA = files(__package__) / "data"
_ITEM = re.compile(r"<item>.*?</item>", re.DOTALL)
_ITEM_LINK = re.compile(r"<link>https?://")
_PUBLISHED_META = (
    "//meta[@property='article:published_time' or @property='og:article:published_time'"
    " or @name='pubdate' or @itemprop='datePublished']/@content"
)
_RSS_TYPE = "application/rss+xml; charset=utf-8"


@dataclass(frozen=True)
class CapturedArticle:
    url: str  # where it was captured
    title: str
    summary: str
    published: str  # RFC 822, as in RSS
    html: bytes
    html_gz: bytes


@dataclass(frozen=True)
class Captures:
    articles: tuple[CapturedArticle, ...]
    pages: dict[str, CapturedArticle]  # "host/path" -> page served there
    feeds: dict[str, str]  # upper-case symbol -> captured RSS document


def _path_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}{parts.path}"


def _load_article(name: str, truth: dict[str, str]) -> CapturedArticle:
    html_gz = (_DATA / "html" / f"{name}.html.gz").read_bytes()
    html = gzip.decompress(html_gz)
    tree = lxml.html.fromstring(html)
    title = (tree.xpath("//meta[@property='og:title']/@content") or [tree.findtext(".//title")])[0]
    published = datetime.fromisoformat(tree.xpath(_PUBLISHED_META)[0])
    return CapturedArticle(
        url=truth["url"],
        title=" ".join(title.split()),
        summary=textwrap.shorten(truth["articleBody"], 300, placeholder="…"),
        published=format_datetime(published.astimezone(UTC)),
        html=html,
        html_gz=html_gz,
    )


@functools.cache
def load_captures() -> Captures:
    truth = json.loads((_DATA / "html" / "ground-truth.json").read_text(encoding="utf-8"))
    articles = tuple(_load_article(name, truth[name]) for name in sorted(truth))
    pages = {_path_key(article.url): article for article in articles}
    feeds = {}
    for capture in (_DATA / "rss").iterdir():
        if capture.name.endswith(".xml"):  # yahoo_headline_<symbol>_<date>.xml
            xml = capture.read_text(encoding="utf-8")
            feeds[capture.name.split("_")[2].upper()] = xml
            for link in re.findall(r"<link>(https?://[^<]+)</link>", "".join(_ITEM.findall(xml))):
                key = _path_key(link)
                pages[key] = articles[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(articles)]
    return Captures(articles, pages, feeds)


def _not_modified(request: web.Request, etag: str, last_modified: datetime) -> bool:
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:  # it takes precedence over If-Modified-Since (RFC 9110 13.2.2)
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or etag in tags
    try:
        return parsedate_to_datetime(request.headers["If-Modified-Since"]) >= last_modified
    except (KeyError, TypeError, ValueError):
        return False


class FixtureServer:
    """The loopback server, as an async context manager. Routes added to `app` before it starts take precedence.

    With `tickers`, only those symbols (and the captured ones) have news; others get an empty channel.
    """

    def __init__(self, *, tickers: Sequence[str] | None = None) -> None:
        self.app = web.Application()
        self._tickers = None if tickers is None else frozenset(t.upper() for t in tickers)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._captures = load_captures()
        self._last_modified = datetime.now(UTC).replace(microsecond=0)

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("FixtureServer has no address until it is started with `async with`")
        return self._base_url

    @property
    def feed_url_template(self) -> str:
        return self.base_url + "/rss/2.0/headline?s={symbols}"

    async def __aenter__(self) -> Self:
        self.app.router.add_get("/rss/2.0/headline", self._feed)
        self.app.router.add_get("/{host}/{path:.*}", self._article)
        # handler_cancellation: a handler that never answers is stopped when its client gives up.
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self._base_url = f"http://{host}:{port}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _local(self, xml: str) -> str:
        """Point item links at this server (channel and image links stay as captured)."""
        return _ITEM.sub(lambda item: _ITEM_LINK.sub(f"<link>{self.base_url}/", item.group()), xml)

    def _generated_items(self, symbol: str) -> list[str]:
        if self._tickers is not None and symbol.upper() not in self._tickers:
            return []
        return [
            f"<item>\n<description>{escape(a.summary)}</description>\n"
            f'<guid isPermaLink="false">{uuid.uuid5(uuid.NAMESPACE_URL, f"{symbol.upper()} {a.url}")}</guid>\n'
            f"<link>{self.base_url}/{_path_key(a.url)}?.tsrc=rss</link>\n"
            f"<pubDate>{a.published}</pubDate>\n<title>{escape(a.title)}</title>\n</item>"
            for a in self._captures.articles
        ]

    def _feed_document(self, symbols: list[str]) -> str:
        captured = [self._captures.feeds.get(symbol.upper()) for symbol in symbols]
        if len(symbols) == 1 and captured[0] is not None:
            return self._local(captured[0])
        items = []
        for symbol, capture in zip(symbols, captured):
            items += _ITEM.findall(self._local(capture)) if capture else self._generated_items(symbol)
        joined = ",".join(symbols)
        return (
            '<rss version="2.0">\n<channel>\n'
            "<copyright>Copyright (c) 2020 Yahoo! Inc. All rights reserved.</copyright>\n"
            f"<description>Latest Financial News for {escape(joined)}</description>\n"
            f"<image>\n<height>45</height>\n<link>http://finance.yahoo.com/q/h?s={escape(joined)}</link>\n"
            f"<title>Yahoo! Finance: {escape(joined)} News</title>\n"
            "<url>http://l.yimg.com/a/i/brand/purplelogo/uh/us/fin.gif</url>\n<width>144</width>\n</image>\n"
            + "\n".join(items)
            + "\n</channel>\n</rss>\n"
        )

    async def _feed(self, request: web.Request) -> web.Response:
        symbols = list(dict.fromkeys(s.strip() for s in request.query.get("s", "").split(",") if s.strip()))
        if not symbols:
            raise web.HTTPBadRequest(text="missing s= (comma-separated ticker symbols)")
        body = self._feed_document(symbols).encode()
        etag = f'"{hashlib.sha256(body).hexdigest()[:20]}"'
        headers = {"ETag": etag, "Last-Modified": format_datetime(self._last_modified, usegmt=True)}
        if _not_modified(request, etag, self._last_modified):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers={**headers, "Content-Type": _RSS_TYPE})

    async def _article(self, request: web.Request) -> web.Response:
        article = self._captures.pages.get(request.rel_url.raw_path.removeprefix("/"))
        if article is None:
            raise web.HTTPNotFound(text=f"no captured page at {request.path}")
        headers = {"Content-Type": "text/html; charset=utf-8"}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=article.html_gz, headers={**headers, "Content-Encoding": "gzip"})
        return web.Response(body=article.html, headers=headers)
