"""Duplicate detection: canonical URLs, and near-duplicate bodies by SimHash over the real pages."""

import itertools
import random

import pytest
from aiohttp import web

from monitor.demo.server import FixtureServer
from scrapers.canonical import canonical_url
from scrapers.dedupe import MIN_WORDS, NearDuplicateIndex, fingerprint, hamming, simhash
from scrapers.extract import extract_article
from scrapers.fetch import fetch_page


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://finance.yahoo.com/news/trump-says-ban-china-owned-023554705.html?.tsrc=rss",
            "https://finance.yahoo.com/news/trump-says-ban-china-owned-023554705.html",
        ),
        (
            "https://www.cnbc.com/2019/11/20/story.html?utm_source=twitter&utm_medium=social&__source=x#comments",
            "https://cnbc.com/2019/11/20/story.html?__source=x",
        ),
        ("HTTPS://WWW.Reuters.COM:443/article/x/", "https://reuters.com/article/x"),
        ("http://example.com:80", "http://example.com/"),
        ("http://example.com:8080/a?b=2&a=1&a=0", "http://example.com:8080/a?a=0&a=1&b=2"),
        ("https://uk.finance.yahoo.com/x.html?guccounter=1&guce_referrer=abc", "https://uk.finance.yahoo.com/x.html"),
        ("https://www2.example.com/A/Path", "https://www2.example.com/A/Path"),  # path case and other subdomains kept
        ("http://[::1]:8000/feed", "http://[::1]:8000/feed"),
    ],
)
def test_canonical_url(url, expected):
    assert canonical_url(url) == expected


@pytest.mark.parametrize("url", ["", "finance.yahoo.com/news/x.html", "mailto:ir@example.com", "ftp://example.com/x"])
def test_canonical_url_rejects_what_is_not_a_web_address(url):
    with pytest.raises(ValueError, match="not an absolute http"):
        canonical_url(url)


def test_canonical_url_rejects_a_bad_port():
    with pytest.raises(ValueError, match="bad port"):
        canonical_url("https://example.com:99999/x")


def test_simhash_is_a_stable_signed_64_bit_value(ground_truth):
    body = next(iter(ground_truth.values()))["articleBody"]
    value = simhash(body)
    assert -(2**63) <= value < 2**63
    assert simhash(body) == value
    assert simhash(body.upper().replace(" ", "  ")) == value  # case and spacing do not matter
    assert hamming(value, value) == 0
    assert hamming(-1, 0) == 64
    assert hamming(-1, 2**64 - 1) == 0  # signed and unsigned spellings of the same bits


def test_short_bodies_get_no_fingerprint():
    assert fingerprint(" ".join(["word"] * (MIN_WORDS - 1))) is None
    assert fingerprint(" ".join(f"w{i}" for i in range(MIN_WORDS))) is not None


EMIRATES = "374ac9a59a85196cdacc1679fb8993521a7b7d9d6533720f102300be1c7face4"
COPY_PATH = "/finance.yahoo.com/news/emirates-inks-order-30-boeing-092908123.html"


def syndicated(original_html: str) -> str:
    """The same story as republished elsewhere: other site furniture, a byline, an edit and a sign-off."""
    html = original_html.replace("<body", "<body><header><nav><a href='/'>Yahoo Finance</a></nav></header><div", 1)
    byline = "<p>CNBC via Yahoo Finance, 3 min read.</p>"
    html = html.replace("<p>DUBAI, United Arab Emirates", byline + "<p>DUBAI, United Arab Emirates", 1)
    html = html.replace("The order is valued at", "The order is worth", 1)
    sign_off = "<p>This story was originally published on CNBC. Sign up for our newsletter.</p>"
    html = html.replace("preferred by airliners.</p>", "preferred by airliners.</p>" + sign_off, 1)
    return html.replace("</body>", "</div></body>", 1)


async def test_a_syndicated_copy_is_found_and_other_stories_are_not(http_client, captured_html, ground_truth):
    copy_html = syndicated(captured_html(EMIRATES))

    async def copy(request: web.Request) -> web.Response:
        return web.Response(text=copy_html, content_type="text/html")

    server = FixtureServer()
    server.app.router.add_get(COPY_PATH, copy)
    async with server:
        texts = {}
        for name, truth in ground_truth.items():
            page = await fetch_page(http_client, server.base_url + "/" + truth["url"].split("://", 1)[1])
            texts[name] = extract_article(page.html(), page.final_url).text
        copy_page = await fetch_page(http_client, server.base_url + COPY_PATH)
        copy_text = extract_article(copy_page.html(), copy_page.final_url).text

    assert "via Yahoo Finance" in copy_text and "worth" in copy_text and "originally published" in copy_text
    ids = {name: article_id for article_id, name in enumerate(texts)}
    index = NearDuplicateIndex()
    for name, text in texts.items():
        index.add(ids[name], fingerprint(text))
    print(f"syndicated copy: {hamming(fingerprint(copy_text), fingerprint(texts[EMIRATES]))} bits from the original")
    assert index.find(fingerprint(copy_text)) == ids[EMIRATES]

    distances = [hamming(fingerprint(a), fingerprint(b)) for a, b in itertools.combinations(texts.values(), 2)]
    print(f"different stories: {min(distances)} to {max(distances)} bits apart")
    assert min(distances) > index.max_distance
    only_emirates = NearDuplicateIndex()
    only_emirates.add(ids[EMIRATES], fingerprint(texts[EMIRATES]))
    assert [only_emirates.find(fingerprint(text)) for name, text in texts.items() if name != EMIRATES] == [None] * 4


def flip(value: int, bits: list[int]) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


def test_index_finds_up_to_three_bits_in_any_bands_among_100k():
    rng = random.Random(42)
    index = NearDuplicateIndex()
    stored = [rng.getrandbits(64) - 2**63 for _ in range(100_000)]
    for article_id, value in enumerate(stored):
        index.add(article_id, value)
    assert len(index) == 100_000
    for article_id in rng.sample(range(len(stored)), 200):
        near = flip(stored[article_id], rng.sample(range(64), 3))  # often one bit in each of three bands
        assert index.find(near) == article_id
        assert index.find(flip(stored[article_id], rng.sample(range(64), 4))) is None


def test_index_prefers_the_closest_then_the_lowest_id():
    index = NearDuplicateIndex()
    index.add(7, flip(0, [1, 2]))
    index.add(5, flip(0, [40]))
    index.add(3, flip(0, [50]))
    assert index.find(0) == 3
    assert index.find(flip(0, [1])) == 7
    assert NearDuplicateIndex(max_distance=0).find(0) is None


def test_index_rejects_bad_input():
    with pytest.raises(ValueError, match="max_distance must be between 0 and 3"):
        NearDuplicateIndex(max_distance=4)
    with pytest.raises(ValueError, match="article 9 does not fit in 64 bits"):
        NearDuplicateIndex().add(9, 2**64)
