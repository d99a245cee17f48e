"""fetch_page over the loopback server: real pages, other encodings, and what must be refused."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from monitor.demo.server import FixtureServer
from scrapers.charset import decode_html
from scrapers.feeds import poll_feed
from scrapers.fetch import fetch_page, parse_content_type
from scrapers.http import FetchError

CNN = "d605bdef2cde7308a9f2fbd1484d4a9c3da0167177245d346da61e455f42208d"
EMIRATES = "374ac9a59a85196cdacc1679fb8993521a7b7d9d6533720f102300be1c7face4"
REUTERS = "57d46c9d751e3fd3ffaf3ede7ac20cebd30eacb5ea78e1a6aa0a72059244e7ca"
BARRONS = "f8ff621a0b9b7646cc0d57d37416feabba2bf78ef5dd0bfc5b080f9f97bbe584"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def serving(body: bytes, content_type: str) -> FixtureServer:
    server = FixtureServer()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    server.app.router.add_get("/page", handler)
    return server


@asynccontextmanager
async def raw_http_server(body: bytes) -> AsyncIterator[str]:
    """A bare server answering without Content-Type, which aiohttp's own server never does."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/page"


async def test_fetches_a_real_page(fixture_server, http_client, captured_html):
    url = fixture_server.base_url + "/www.cnn.com/2019/11/18/investing/asian-market-latest/index.html"
    page = await fetch_page(http_client, url)
    assert (page.url, page.final_url, page.content_type) == (url, url, "text/html")
    assert page.html() == captured_html(CNN)
    plain = await http_client.get(url, headers={"Accept-Encoding": "identity"})  # the server gzips only on request
    assert "Content-Encoding" not in plain.headers
    assert plain.body.decode() == page.html()


async def test_every_feed_link_leads_to_a_page(fixture_server, http_client):
    feed_url = fixture_server.feed_url_template.format(symbols="MSFT,7203.T,IBM")
    feed = await poll_feed(http_client, feed_url, (), etag=None, last_modified=None)
    for item in feed.items:
        page = await fetch_page(http_client, item.url)
        assert "<html" in page.html()[:2000].lower()


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "application/pdf", "not an HTML page: application/pdf"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "text/html", "not an HTML page: a PDF document served as text/html"),
        (PNG, "text/html", "not an HTML page: binary data (NUL bytes) served as text/html"),
        (PNG, "application/octet-stream", "not an HTML page: application/octet-stream"),
        (b'{"quote": 1}', "application/json; charset=utf-8", "not an HTML page: application/json"),
        (b"", "text/html", "empty page"),
    ],
    ids=["pdf", "pdf-as-html", "png-as-html", "octet-stream", "json", "empty"],
)
async def test_refuses_what_is_not_html(http_client, body, content_type, reason):
    async with serving(body, content_type) as server:
        with pytest.raises(FetchError) as caught:
            await fetch_page(http_client, server.base_url + "/page")
    assert caught.value.reason == reason
    assert not caught.value.retryable


@pytest.mark.parametrize(
    ("name", "content_type", "edit"),
    [
        (REUTERS, "text/html", ('<meta charset="utf-8">', '<meta charset="windows-1252">')),  # <meta> says it
        (EMIRATES, "text/html; charset=ISO-8859-1", None),  # header says latin-1, bytes are windows-1252
        (BARRONS, "text/html", None),  # nobody says: detection
        (REUTERS, "text/html; charset=utf-8", None),  # header and <meta> both wrong
    ],
    ids=["meta", "header-latin1", "undeclared", "misdeclared"],
)
async def test_windows_1252_pages_are_decoded_right(http_client, captured_html, name, content_type, edit):
    original = captured_html(name)
    if edit:
        original = original.replace(*edit)
    async with serving(original.encode("cp1252"), content_type) as server:
        page = await fetch_page(http_client, server.base_url + "/page")
    assert page.html() == original


async def test_undecodable_bytes_never_crash(http_client):
    body = b"<html><body><p>Caf\xe9 \x81\x8d\x8f\x90\x9d \xff\xfe\xfd</p></body></html>" * 20
    async with serving(body, "text/html; charset=utf-8") as server:
        page = await fetch_page(http_client, server.base_url + "/page")
    assert page.html().startswith("<html><body><p>Caf")


def test_parse_content_type():
    assert parse_content_type('text/HTML; charset="UTF-8"') == ("text/html", "UTF-8")
    assert parse_content_type("application/xhtml+xml") == ("application/xhtml+xml", None)
    assert parse_content_type(None) == (None, None)
    assert parse_content_type("  ") == (None, None)


async def test_untyped_answers_are_sniffed(http_client):
    async with raw_http_server(b"<html><body><p>No Content-Type here.</p></body></html>") as url:
        page = await fetch_page(http_client, url)
    assert (page.content_type, page.html()) == ("text/html", "<html><body><p>No Content-Type here.</p></body></html>")
    async with raw_http_server(b"\x00\x01\x02binary") as url:
        with pytest.raises(FetchError, match=r"binary data \(NUL bytes\) served as no Content-Type"):
            await fetch_page(http_client, url)


def test_bytes_no_charset_fits_still_decode():
    noise = bytes(range(1, 256)) * 8  # every non-NUL byte value: no encoding explains it
    text = decode_html(noise, "utf-8")
    assert "\ufffd" in text and text.startswith("\x01\x02\x03")
