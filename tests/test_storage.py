import asyncio
import subprocess
import sys
from datetime import UTC, datetime

import duckdb
import pytest

from scrapers.canonical import canonical_url
from scrapers.feeds import FeedItem
from storage import queries, writes
from storage.db import Database, DatabaseError, DatabaseLocked
from storage.migrations import available, current_version
from storage.writer import StoreWriter

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def item(url, ticker, guid=None, title="Apple beats estimates"):
    return FeedItem(
        url=url, canonical_url=canonical_url(url), guid=guid, title=title, summary="summary", published_at=NOW,
        tickers=(ticker,), feed_url=f"http://feeds/{ticker}",
    )


def hold_file(path, seconds):
    """Another process holding the database read-write, as a second daemon or a DuckDB shell would."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(float(sys.argv[2]))",
         str(path), str(seconds)],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_migrations_apply_once_in_order(tmp_path):
    db = Database(tmp_path / "s.duckdb")
    with db.write() as conn:
        assert current_version(conn) == available()[-1][0]
        tables = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"stories", "feeds", "story_tickers", "articles", "analyses", "extractions", "entity_sentiment"} <= tables
    again = Database(tmp_path / "s.duckdb")
    with again.write() as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(available())


def test_same_story_in_two_tickers_feeds_is_one_story_with_both_tickers(tmp_path):
    db = Database(tmp_path / "s.duckdb")
    url = "https://finance.yahoo.com/news/apple-beats-1.html?.tsrc=rss"
    with db.write() as conn:
        first = writes.accept_items(conn, [item(url, "AAPL")], NOW)
        second = writes.accept_items(conn, [item(url + "&utm_source=x", "MSFT"), item(url, "AAPL")], NOW)
        tickers = conn.execute("SELECT tickers FROM articles").fetchall()
        pending = conn.execute("SELECT count(*) FROM stories").fetchone()[0]
    assert len(first) == 1 and second == []
    assert pending == 1
    assert tickers == []  # pending stories are not articles yet
    with db.read() as conn:
        assert sorted(queries.stories_to_fetch(conn, NOW)[0].tickers) == ["AAPL", "MSFT"]


def test_guid_matches_a_story_under_another_url(tmp_path):
    db = Database(tmp_path / "s.duckdb")
    with db.write() as conn:
        writes.accept_items(conn, [item("https://a.example/x", "AAPL", guid="g-1")], NOW)
        again = writes.accept_items(conn, [item("https://b.example/y", "MSFT", guid="g-1")], NOW)
        within = writes.accept_items(
            conn, [item("https://c.example/1", "NVDA", guid="g-2"), item("https://c.example/2", "AMD", guid="g-2")], NOW
        )
    assert again == []
    assert len(within) == 1 and within[0].tickers == ("NVDA", "AMD")


def test_ticker_sentiment_counts_an_article_once_per_ticker(tmp_path):
    db = Database(tmp_path / "s.duckdb")
    with db.write() as conn:
        [story] = writes.accept_items(conn, [item("https://x/1", "AAPL")], NOW)
        for analysis_id in (1, 2):  # an older analysis, then the one that counts
            conn.execute("INSERT INTO analyses (id, story_id, content_version, analyzed_at, model, prompt_version, "
                         "ok, attempts) VALUES (?, ?, 1, now(), 'm', '1', true, 1)", [analysis_id, story.id])
        extractions = [(1, "Apple", "AAPL", "-", -0.9, 0.99),  # superseded by analysis 2
                       (2, "Apple", "AAPL", "+", 0.5, 0.7), (2, "Apple Inc.", "AAPL", "+", 0.9, 0.95),
                       (2, "Microsoft", "MSFT", "0", 0.0, 0.8), (2, "Alphabet", "GOOGL", "-", -0.6, 0.8),
                       (2, "Google", "GOOGL", "+", 0.6, 0.8), (2, "the Fed", None, "0", 0.0, 0.9)]
        for position, (analysis_id, entity, ticker, polarity, score, confidence) in enumerate(extractions):
            conn.execute("INSERT INTO extractions VALUES (?, ?, ?, ?, ?, ?, 'Business', ?, ?)",
                         [analysis_id, story.id, position, entity, ticker, polarity, score, confidence])
    with db.read() as conn:
        rows = conn.execute("SELECT ticker, entity, polarity, score, mentions FROM ticker_sentiment "
                            "ORDER BY ticker").fetchall()
    assert rows == [("AAPL", "Apple Inc.", "+", 0.9, 2),  # the surer of its two names
                    ("GOOGL", "Alphabet", "-", -0.6, 2),  # equally sure: the first name alphabetically
                    ("MSFT", "Microsoft", "0", 0.0, 1)]  # and no row for the entity without a ticker


def test_ticker_sentiment_places_undated_news_at_its_analysis(tmp_path):
    db = Database(tmp_path / "s.duckdb")
    analyzed = datetime(2026, 11, 21, 8, 30, tzinfo=UTC)
    with db.write() as conn:
        dated, undated = writes.accept_items(conn, [item("https://x/1", "AAPL"), item("https://x/2", "MSFT")], NOW)
        conn.execute("UPDATE stories SET published_at = NULL WHERE id = ?", [undated.id])
        for story in (dated, undated):
            conn.execute("INSERT INTO analyses (id, story_id, content_version, analyzed_at, model, prompt_version, "
                         "ok, attempts) VALUES (?, ?, 1, ?, 'm', '1', true, 1)", [story.id, story.id, analyzed])
            conn.execute("INSERT INTO extractions VALUES (?, ?, 0, 'X', ?, '+', 'Business', 0.5, 0.9)",
                         [story.id, story.id, story.tickers[0]])
    with db.read() as conn:
        rows = conn.execute("SELECT ticker, news_time FROM ticker_sentiment ORDER BY ticker").fetchall()
    assert rows == [("AAPL", NOW), ("MSFT", analyzed)]


async def test_writer_batches_and_answers_every_submit(tmp_path):
    db = Database(tmp_path / "s.duckdb")
    async with StoreWriter(db, interval=0.2) as writer:
        results = await asyncio.gather(
            *(writer.submit(lambda conn, i=i: writes.accept_items(conn, [item(f"https://x/{i}", "AAPL")], NOW))
              for i in range(50))
        )
    assert sum(len(r) for r in results) == 50
    assert writer.stats.batches < 10
    with db.read() as conn:
        assert conn.execute("SELECT count(*) FROM stories").fetchone()[0] == 50


async def test_a_failing_operation_does_not_lose_the_rest_of_its_batch(tmp_path):
    db = Database(tmp_path / "s.duckdb")

    def broken(conn):
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    async with StoreWriter(db, interval=0.2) as writer:
        good = writer.submit(lambda conn: writes.accept_items(conn, [item("https://x/1", "AAPL")], NOW))
        bad = writer.submit(broken)
        outcome = await asyncio.gather(good, bad, return_exceptions=True)
    assert len(outcome[0]) == 1
    assert isinstance(outcome[1], duckdb.Error) and "no_such_table" in str(outcome[1])
    with db.read() as conn:
        assert conn.execute("SELECT count(*) FROM stories").fetchone()[0] == 1


async def test_writer_waits_out_a_process_holding_the_file_and_loses_nothing(tmp_path):
    path = tmp_path / "s.duckdb"
    with Database(path).write():
        pass
    holder = hold_file(path, 2.0)
    try:
        async with StoreWriter(Database(path, lock_timeout=0.5), interval=0.05) as writer:
            new = await writer.submit(lambda conn: writes.accept_items(conn, [item("https://x/1", "AAPL")], NOW))
    finally:
        holder.wait()
    assert len(new) == 1
    assert writer.stats.lock_waits >= 1
    with Database(path).read() as conn:
        assert conn.execute("SELECT count(*) FROM stories").fetchone()[0] == 1


def test_reader_gives_up_on_a_held_file_with_a_clear_error(tmp_path):
    path = tmp_path / "s.duckdb"
    with Database(path).write():
        pass
    holder = hold_file(path, 3.0)
    try:
        with pytest.raises(DatabaseLocked, match="held by another process"):
            with Database(path, lock_timeout=0.3).read():
                pass
    finally:
        holder.kill()
        holder.wait()


def test_corrupt_file_is_named_and_explained(tmp_path):
    path = tmp_path / "s.duckdb"
    path.write_bytes(b"this is not a database" * 1000)
    with pytest.raises(DatabaseError, match="cannot open as a DuckDB database"):
        with Database(path).write():
            pass


def test_reading_before_the_first_run_says_so(tmp_path):
    with pytest.raises(DatabaseError, match="no database yet"):
        with Database(tmp_path / "none.duckdb").read():
            pass


def test_a_reader_brings_an_older_releases_schema_up_to_date(tmp_path):
    path = tmp_path / "s.duckdb"
    *older, (latest, _, _) = available()
    with duckdb.connect(str(path)) as conn:  # the file as the previous release left it
        current_version(conn)
        for version, name, sql in older:
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
    with Database(path).read() as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == latest
        assert conn.execute("SELECT count(*) FROM ticker_sentiment").fetchone()[0] == 0
