"""Feeds end to end over the loopback server: both real Yahoo shapes, batches, 304s and the ways feeds go wrong."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from monitor.demo.server import FixtureServer
from scrapers.feeds import FeedError, poll_feed
from scrapers.http import FetchError

MSFT_CAPTURE = "yahoo_headline_msft_2020-08-01.xml"
TOYOTA_CAPTURE = "yahoo_headline_7203.T_2026-09-27.xml"


def capture(demo_data: Path, name: str) -> bytes:
    return (demo_data / "rss" / name).read_bytes()


async def poll(client, server: FixtureServer, symbols: str, **conditional):
    url = server.feed_url_template.format(symbols=symbols)
    tickers = tuple(symbols.split(","))
    etag, last_modified = conditional.get("etag"), conditional.get("last_modified")
    return await poll_feed(client, url, tickers, etag=etag, last_modified=last_modified)


def serving(body: bytes, content_type: str, path: str = "/feed") -> FixtureServer:
    server = FixtureServer()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    server.app.router.add_get(path, handler)
    return server


async def test_2020_shape_with_guids(fixture_server, http_client):
    result = await poll(http_client, fixture_server, "MSFT")
    assert (result.not_modified, result.warning) == (False, None)
    assert result.etag and result.last_modified
    first, second = result.items
    assert first.guid == "a9ad41d2-24a2-380d-a9fa-3ce7b7047603"
    assert first.title == "White House Poised to Announce Move on TikTok’s U.S. Operations"
    assert first.summary.startswith("(Bloomberg) -- The Trump administration is poised")
    assert first.published_at == datetime(2020, 8, 1, 20, 57, 44, tzinfo=UTC)
    story = f"{fixture_server.base_url}/finance.yahoo.com/news/trump-says-ban-china-owned-023554705.html"
    assert (first.url, first.canonical_url) == (story + "?.tsrc=rss", story)
    assert (first.tickers, first.feed_url) == (("MSFT",), fixture_server.feed_url_template.format(symbols="MSFT"))
    assert second.title == "Is NVIDIA a Buy?"


async def test_2026_shape_without_guids_and_channel_elements_after_items(fixture_server, http_client):
    result = await poll(http_client, fixture_server, "7203.T")
    assert result.warning is None
    assert [item.guid for item in result.items] == [None, None]
    assert [item.title for item in result.items] == [
        "UK consumers urged to sign up for share of £56m new car delivery compensation",
        "Joby Stock Has a Futuristic Story. Here’s My Long-Term Price Prediction",
    ]
    assert result.items[1].published_at == datetime(2026, 9, 26, 15, 30, 15, tzinfo=UTC)
    assert result.items[1].canonical_url.endswith(
        "/247wallst.com/investing/2026/09/26/joby-stock-has-a-futuristic-story-heres-my-long-term-price-prediction"
    )


async def test_a_batch_of_tickers_in_one_request(fixture_server, http_client):
    result = await poll(http_client, fixture_server, "MSFT,7203.T,AAPL")
    assert len(result.items) == 2 + 2 + 5
    assert {item.tickers for item in result.items} == {("MSFT", "7203.T", "AAPL")}
    assert len({item.canonical_url for item in result.items}) == 9


async def test_the_same_story_via_two_tickers_has_one_canonical_url(fixture_server, http_client):
    apple = await poll(http_client, fixture_server, "AAPL")
    nvidia = await poll(http_client, fixture_server, "NVDA")
    assert {i.canonical_url for i in apple.items} == {i.canonical_url for i in nvidia.items}
    assert {i.url for i in apple.items} == {i.url for i in nvidia.items}
    assert not {i.guid for i in apple.items} & {i.guid for i in nvidia.items}  # per-symbol guids, as generated


async def test_unchanged_feed_answers_304_to_etag_and_to_last_modified(fixture_server, http_client):
    first = await poll(http_client, fixture_server, "MSFT")
    by_etag = await poll(http_client, fixture_server, "MSFT", etag=first.etag)
    assert (by_etag.not_modified, by_etag.items, by_etag.etag) == (True, [], first.etag)
    by_date = await poll(http_client, fixture_server, "MSFT", last_modified=first.last_modified)
    assert by_date.not_modified
    other_feed = await poll(http_client, fixture_server, "AAPL", etag=first.etag)
    assert not other_feed.not_modified and len(other_feed.items) == 5


async def test_redirect_to_a_consent_page_is_named_in_the_error(http_client):
    server = FixtureServer()
    consent_path = "/consent.yahoo.com/v2/collectConsent?sessionId=3_cc-session_0f4c"

    async def to_consent(request: web.Request) -> web.Response:
        raise web.HTTPFound(consent_path)

    async def consent_page(request: web.Request) -> web.Response:
        html = (
            "<!DOCTYPE html><html><head><title>Yahoo is part of the Yahoo family of brands</title></head>"
            "<body><form>Accept all</form></body></html>"
        )
        return web.Response(text=html, content_type="text/html")

    server.app.router.add_get("/rss/2.0/headline", to_consent)
    server.app.router.add_get("/consent.yahoo.com/v2/collectConsent", consent_page)
    async with server:
        with pytest.raises(FeedError) as caught:
            await poll(http_client, server, "MSFT")
    assert caught.value.feed_url == server.feed_url_template.format(symbols="MSFT")
    assert f"redirected to {server.base_url}{consent_path}" in caught.value.reason
    assert "served HTML (consent page?) where RSS was expected" in caught.value.reason


async def test_html_where_rss_was_expected(http_client):
    async with serving(b"<html><body>Sorry</body></html>", "text/plain") as server:
        with pytest.raises(FeedError, match="served HTML"):
            await poll_feed(http_client, server.base_url + "/feed", ("MSFT",), etag=None, last_modified=None)


async def test_malformed_feed_still_yields_its_entries_with_a_warning(http_client, demo_data):
    # An unescaped "&" and a feed cut off before its closing tags, as flaky servers send.
    broken = capture(demo_data, MSFT_CAPTURE).replace(b"Is NVIDIA a Buy?", b"Is NVIDIA & AMD a Buy?")
    broken = broken[: broken.index(b"</channel>")]
    async with serving(broken, "application/rss+xml; charset=utf-8") as server:
        result = await poll_feed(http_client, server.base_url + "/feed", ("MSFT",), etag=None, last_modified=None)
    assert [item.title for item in result.items][1] == "Is NVIDIA & AMD a Buy?"
    assert result.warning is not None and result.warning.startswith("malformed feed, read 2 entries anyway")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'<rss version="2.0"><channel><ite\x00\xff\xfe\x13 garbage', "served nothing readable as RSS/Atom"),
        (b'{"error": "rate limited"}', "served nothing readable as RSS/Atom"),
        (b"  \n", "served an empty body"),
    ],
    ids=["truncated-garbage", "json", "empty"],
)
async def test_unreadable_feeds_raise(http_client, body, expected):
    async with serving(body, "application/rss+xml") as server:
        with pytest.raises(FeedError, match=expected):
            await poll_feed(http_client, server.base_url + "/feed", ("MSFT",), etag=None, last_modified=None)


async def test_items_without_a_link_are_skipped_and_counted(http_client, demo_data):
    body = capture(demo_data, MSFT_CAPTURE).replace(
        b"<link>https://finance.yahoo.com/news/trump-says-ban-china-owned-023554705.html?.tsrc=rss</link>", b""
    )
    async with serving(body, "application/rss+xml") as server:
        result = await poll_feed(http_client, server.base_url + "/feed", ("MSFT",), etag=None, last_modified=None)
    assert [item.title for item in result.items] == ["Is NVIDIA a Buy?"]
    assert result.warning == "skipped 1 of 2 entries without an http(s) link"


@pytest.mark.parametrize(
    ("declaration", "content_type"),
    [
        ('<?xml version="1.0" encoding="windows-1252"?>\n', "application/rss+xml"),
        ("", "text/xml; charset=ISO-8859-1"),  # servers say ISO-8859-1 and send windows-1252 (the ’)
    ],
    ids=["xml-declaration", "http-header"],
)
async def test_non_utf8_feeds_are_decoded_right(http_client, demo_data, declaration, content_type):
    body = (declaration + capture(demo_data, TOYOTA_CAPTURE).decode()).encode("cp1252")
    async with serving(body, content_type) as server:
        result = await poll_feed(http_client, server.base_url + "/feed", ("7203.T",), etag=None, last_modified=None)
    assert [item.title for item in result.items] == [
        "UK consumers urged to sign up for share of £56m new car delivery compensation",
        "Joby Stock Has a Futuristic Story. Here’s My Long-Term Price Prediction",
    ]
    assert result.warning is None


async def test_html_in_titles_and_descriptions_becomes_plain_text(http_client):
    body = (
        b'<rss version="2.0"><channel><item><title>AT&amp;T <b>beats</b></title>'
        b"<description><![CDATA[<p>Shares rose <a href='x'>5%</a>.</p>]]></description>"
        b"<link>https://finance.yahoo.com/news/att.html</link></item></channel></rss>"
    )
    async with serving(body, "application/rss+xml") as server:
        result = await poll_feed(http_client, server.base_url + "/feed", ("T",), etag=None, last_modified=None)
    assert (result.items[0].title, result.items[0].summary) == ("AT&T beats", "Shares rose 5%.")
    assert result.items[0].published_at is None


async def test_server_with_a_ticker_list_has_news_only_for_those(http_client):
    async with FixtureServer(tickers=["aapl"]) as server:
        batch = await poll(http_client, server, "AAPL,IBM,MSFT")
    assert len(batch.items) == 5 + 0 + 2


async def test_server_wants_symbols(fixture_server, http_client):
    with pytest.raises(FetchError, match="HTTP 400") as caught:
        await http_client.get(fixture_server.feed_url_template.format(symbols=" ,"))
    assert not caught.value.retryable


async def test_a_feed_labelled_text_html_is_still_read(http_client, demo_data):
    async with serving(capture(demo_data, MSFT_CAPTURE), "text/html; charset=utf-8") as server:
        result = await poll_feed(http_client, server.base_url + "/feed", ("MSFT",), etag=None, last_modified=None)
    assert len(result.items) == 2


async def test_control_characters_in_a_title_are_dropped(http_client):
    body = (
        b'<rss version="2.0"><channel><item><title>Q3\x01 results\x1f beat</title>'
        b"<link>https://finance.yahoo.com/news/q3.html</link></item></channel></rss>"
    )
    async with serving(body, "application/rss+xml") as server:
        result = await poll_feed(http_client, server.base_url + "/feed", ("T",), etag=None, last_modified=None)
    assert result.items[0].title == "Q3 results beat"
    assert result.warning is not None and result.warning.startswith("malformed feed")
