"""Extraction quality on the five real pages (token-level F1 against the human-checked article bodies)."""

import pickle
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime

import pytest

from scrapers.extract import Extracted, extract_article
from scrapers.fetch import fetch_page

F1_FLOOR = 0.8
REUTERS = "57d46c9d751e3fd3ffaf3ede7ac20cebd30eacb5ea78e1a6aa0a72059244e7ca"


def token_f1(predicted: str, expected: str) -> float:
    """Bag-of-words F1, as in Scrapinghub's article-extraction benchmark."""
    got, want = (Counter(re.findall(r"\w+", text.lower())) for text in (predicted, expected))
    overlap = sum((got & want).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(got.values()), overlap / sum(want.values())
    return 2 * precision * recall / (precision + recall)


async def test_extraction_f1_on_the_five_real_pages(fixture_server, http_client, ground_truth):
    scores = {}
    for truth in ground_truth.values():
        url = fixture_server.base_url + "/" + truth["url"].split("://", 1)[1]
        page = await fetch_page(http_client, url)
        extracted = extract_article(page.html(), truth["url"])
        assert extracted is not None, truth["url"]
        assert extracted.title and extracted.author
        published = extracted.published_at
        assert (published.year, published.month, published.tzinfo) == (2019, 11, UTC)
        scores[truth["url"]] = token_f1(extracted.text, truth["articleBody"])
    for url, score in scores.items():
        print(f"F1 {score:.3f}  {url}")
    print(f"F1 mean {sum(scores.values()) / len(scores):.3f}")
    assert min(scores.values()) >= F1_FLOOR


def test_metadata_of_a_page(captured_html, ground_truth):
    extracted = extract_article(captured_html(REUTERS), ground_truth[REUTERS]["url"])
    assert extracted is not None
    assert extracted.title == "Oversupply angst drags oil lower, stocks drift near highs"
    assert extracted.author == "Rodrigo Campos"
    assert extracted.published_at == datetime(2019, 11, 19, 21, 57, 1, tzinfo=UTC)
    assert extracted.text.startswith("NEW YORK (Reuters) - Oil prices fell sharply on Tuesday")


@pytest.mark.parametrize(
    "html",
    ["", "<html><body><nav><a href='/'>Home</a> <a href='/markets'>Markets</a></nav></body></html>", "not html at all"],
    ids=["empty", "navigation-only", "plain-words"],
)
def test_no_main_text_gives_none(html):
    assert extract_article(html, "https://example.com/") is None


def test_runs_in_a_process_pool(captured_html, ground_truth):
    name, truth = next(iter(ground_truth.items()))
    html = captured_html(name)
    with ProcessPoolExecutor(max_workers=1) as pool:
        remote = pool.submit(extract_article, html, truth["url"]).result()
    assert isinstance(remote, Extracted)
    assert remote == extract_article(html, truth["url"])
    assert pickle.loads(pickle.dumps(remote)) == remote
