"""The ingestion benchmark: its pages, its loopback server, its probes, and one tiny end-to-end run."""

import asyncio
import os
import time

import pytest

from bench._common import BenchError, LoopLagProbe, run_in_fresh_process
from bench.ingest import LoopbackNewsServer, StoryCorpus, main, run_benchmark, ticker_symbols
from scrapers.feeds import parse_feed
from scrapers.fetch import fetch_page
from scrapers.http import FetchError, HttpClient

TICKERS = ticker_symbols(3)
BASE = "http://127.0.0.1:9"


def test_every_story_has_its_own_url_and_page() -> None:
    corpus = StoryCorpus(TICKERS, 2, BASE)
    stories = list(corpus.stories())
    assert len(stories) == len(corpus) == 6
    assert len({corpus.url(*story) for story in stories}) == 6
    assert len({corpus.page(*story) for story in stories}) == 6
    # story 0 of T0000 and story 1 of T0002 are both capture 0: the same page but for their own paragraph
    assert corpus.capture_index("T0000", 0) == corpus.capture_index("T0002", 1) == 0
    assert "Story 2 of 2 about T0002." in corpus.page("T0002", 1)


def test_unknown_story_is_a_key_error() -> None:
    corpus = StoryCorpus(TICKERS, 2, BASE)
    with pytest.raises(KeyError):
        corpus.capture_index("NOPE", 0)
    with pytest.raises(KeyError):
        corpus.capture_index("T0000", 2)


def test_feed_reads_as_yahoo_items_with_the_story_links() -> None:
    corpus = StoryCorpus(TICKERS, 2, BASE)
    feed_url = BASE + "/rss/2.0/headline?s=T0000,T0001"
    items, warning = parse_feed(
        corpus.feed(["T0000", "T0001"]).encode(), content_type="application/rss+xml", feed_url=feed_url,
        tickers=("T0000", "T0001"),
    )
    assert warning is None
    assert [item.url for item in items] == [corpus.url(t, k) for t in ("T0000", "T0001") for k in range(2)]
    assert all(item.title and item.summary and item.published_at and item.guid for item in items)


@pytest.fixture(scope="module")
def server() -> LoopbackNewsServer:
    with LoopbackNewsServer(TICKERS, 2) as running:
        yield running


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
async def test_server_serves_the_corpus_page_strings(
    server: LoopbackNewsServer, http_client: HttpClient, encoding: str
) -> None:
    corpus = StoryCorpus(TICKERS, 2, server.base_url)
    for ticker, k in corpus.stories():
        resp = await http_client.get(corpus.url(ticker, k), headers={"Accept-Encoding": encoding})
        assert resp.headers.get("Content-Encoding", "identity") == encoding
        assert resp.body.decode("utf-8") == corpus.page(ticker, k)


async def test_server_answers_404_for_a_story_it_does_not_have(server: LoopbackNewsServer, http_client) -> None:
    with pytest.raises(FetchError, match="404"):
        await fetch_page(http_client, server.base_url + "/news/T0000/7.html")
    with pytest.raises(FetchError, match="404"):
        await http_client.get(server.base_url + "/rss/2.0/headline?s=T0000,ZZZZ")


async def test_lag_probe_sees_the_loop_blocked() -> None:
    async with LoopLagProbe(interval=0.005) as probe:
        await asyncio.sleep(0.02)
        time.sleep(0.2)  # blocks the loop: the next wake-up is at least this late
        await asyncio.sleep(0.02)
    summary = probe.summary()
    assert summary.samples >= 2
    assert summary.max_ms >= 190
    assert summary.p50_ms < summary.max_ms


async def test_lag_probe_without_a_sample_says_so() -> None:
    async with LoopLagProbe(interval=10) as probe:
        pass
    with pytest.raises(BenchError, match="never woke up"):
        probe.summary()


def test_lag_probe_refuses_a_nonpositive_interval() -> None:
    with pytest.raises(ValueError, match="interval must be > 0"):
        LoopLagProbe(interval=0)


def _fail() -> None:
    raise RuntimeError("broken on purpose")


def test_fresh_process_failure_comes_back_with_its_traceback() -> None:
    with pytest.raises(BenchError, match="(?s)_fail failed in its process.*RuntimeError: broken on purpose"):
        run_in_fresh_process(_fail)


def test_fresh_process_that_dies_is_reported_with_its_exit_code() -> None:
    with pytest.raises(BenchError, match="_exit died in its process \\(exit code 3\\)"):
        run_in_fresh_process(os._exit, 3)


def test_fresh_process_returns_the_value() -> None:
    assert run_in_fresh_process(sorted, [3, 1, 2]) == [1, 2, 3]


def test_cli_refuses_zero_tickers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--tickers", "0"])
    assert exit_info.value.code == 2
    assert "--tickers: must be at least 1, got 0" in capsys.readouterr().err


def test_a_small_run_stores_every_story_and_accounts_for_it() -> None:
    result = run_benchmark(tickers=5, stories_per_ticker=2, single_process_pages=5)
    assert result.articles == result.pages_served == 10
    # ten pages made from five captures: the second copy of each capture can be flagged
    assert 1 <= result.near_duplicates <= 5
    assert result.articles_per_s > 0 and result.bound_per_s > 0 and result.bound_single_per_s > 0
    assert result.ratio == pytest.approx(result.articles_per_s / result.bound_per_s)
    assert result.cpu_workers_ms > 0 and result.cpu_bound_ms > 0
    assert result.cpu_ratio == pytest.approx(result.cpu_bound_ms / (result.cpu_main_ms + result.cpu_workers_ms))
    assert result.rss_main_mb > 0 and result.rss_children_mb > 0
