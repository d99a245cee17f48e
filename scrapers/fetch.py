"""Fetch an article page and hand back its text, refusing what is not HTML."""

import re
from dataclasses import dataclass

from scrapers.charset import bom_encoding, decode_html
from scrapers.http import FetchError, HttpClient

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_HTML_ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1"
_CHARSET_PARAM = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)


@dataclass
class Page:
    url: str  # as requested
    final_url: str  # after redirects
    body: bytes  # as received (decompressed); decoding is CPU work, left to whoever reads the text
    charset: str | None  # from the Content-Type header
    content_type: str  # media type without parameters, e.g. "text/html"

    def html(self) -> str:
        """The page as text, by its BOM, header charset, <meta charset> or detection."""
        return decode_html(self.body, self.charset)


def parse_content_type(value: str | None) -> tuple[str | None, str | None]:
    """("text/html", "utf-8") from "text/html; charset=UTF-8"; None for each part that is missing."""
    if not value or not value.strip():
        return None, None
    media_type, _, params = value.partition(";")
    charset = _CHARSET_PARAM.search(params)
    return media_type.strip().lower() or None, charset.group(1) if charset else None


def _binary_reason(body: bytes) -> str | None:
    if body.startswith(b"%PDF-"):
        return "a PDF document"
    if b"\x00" in body and bom_encoding(body) is None:  # UTF-16/32 text has NULs too, and a BOM
        return "binary data (NUL bytes)"
    return None


async def fetch_page(client: HttpClient, url: str) -> Page:
    """GET `url` and check it is an HTML page. Raises FetchError for transport failures and other content."""
    resp = await client.get(url, headers={"Accept": _HTML_ACCEPT})
    media_type, charset = parse_content_type(resp.headers.get("Content-Type"))

    def refuse(reason: str) -> FetchError:
        return FetchError(url, reason, retryable=False, status=resp.status)

    if media_type is not None and media_type not in HTML_TYPES:
        raise refuse(f"not an HTML page: {media_type}")
    if not resp.body.strip():
        raise refuse("empty page")
    binary = _binary_reason(resp.body)
    if binary is not None:
        raise refuse(f"not an HTML page: {binary} served as {media_type or 'no Content-Type'}")
    return Page(url, resp.final_url, resp.body, charset, media_type or "text/html")
