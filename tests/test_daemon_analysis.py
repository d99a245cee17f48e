"""The analyze stage in the daemon, with the real embedded model on CPU."""


from monitor.analysis import build_analyzer
from monitor.config import Config, PipelineSettings
from monitor.daemon import run_daemon
from monitor.demo.server import FixtureServer
from model.settings import ModelSettings
from storage.db import Database
from helpers import add_feed_of_pages


def config_for(server, feed_path, db_path, fast_settings, **model) -> Config:
    return Config(
        watchlist=[], extra_feeds=[server.base_url + feed_path], feed_url=server.feed_url_template,
        database=db_path, http=fast_settings, pipeline=PipelineSettings(write_interval_seconds=0.05),
        model=ModelSettings(**model),
    )


def rows(db_path, sql):
    with Database(db_path).read() as conn:
        return conn.execute(sql).fetchall()


async def test_stored_articles_get_per_entity_sentiment(db_path, fast_settings):
    server = FixtureServer(tickers=[])
    feed = add_feed_of_pages(server, [0, 2])
    async with server:
        config = config_for(server, feed, db_path, fast_settings)
        analyzer = build_analyzer(config)
        summary = await run_daemon(config, once=True, analyzer=analyzer)
        again = await run_daemon(config, once=True, analyzer=analyzer)
    assert summary.stats.analyzed == 2 and summary.stats.analysis_failures == 0
    analyses = rows(db_path, "SELECT ok, model, prompt_version, attempts, completion_tokens > 0 FROM analyses")
    assert len(analyses) == 2 and all(a[0] and a[1] and a[2] and a[3] >= 1 and a[4] for a in analyses)
    sentiment = rows(db_path, "SELECT article_id, entity, polarity, category, score, confidence, ticker FROM entity_sentiment")
    assert sentiment, "the model named no entity in five real finance articles"
    for _, entity, polarity, category, score, confidence, _ in sentiment:
        assert entity and polarity in "+-0~" and category
        assert -1 <= score <= 1 and 0 <= confidence <= 1
    assert rows(db_path, "SELECT count(DISTINCT article_id) FROM entity_sentiment")[0][0] == 2
    assert again.stats.analyzed == 0, "a second run finds nothing left to analyze"


async def test_output_failing_validation_is_stored_as_a_failure_not_a_crash(db_path, fast_settings):
    # Unconstrained decoding cut off after 16 tokens cannot be a complete JSON list.
    server = FixtureServer(tickers=[])
    feed = add_feed_of_pages(server, [1])
    async with server:
        config = config_for(server, feed, db_path, fast_settings, grammar=False, max_output_tokens=16)
        summary = await run_daemon(config, once=True, analyzer=build_analyzer(config))
    assert summary.stats.analysis_failures == 1 and summary.stats.analyzed == 0
    failures = rows(db_path, "SELECT ok, attempts, error, raw_output FROM analyses")
    assert len(failures) == 1
    for ok, attempts, error, raw in failures:
        assert not ok and attempts == 2 and error.startswith("output cut off at model.max_output_tokens = 16")
        assert raw is not None
    assert rows(db_path, "SELECT count(*) FROM entity_sentiment") == [(0,)]
    assert rows(db_path, "SELECT count(*) FROM articles") == [(1,)], "the article itself is kept"
