"""The `sentimon` commands a user types, on a real database filled by a real run."""

import json
from datetime import datetime

import pytest
import tomli_w
from typer.testing import CliRunner

from monitor.cli import app
from monitor.config import Config, PipelineSettings
from monitor.daemon import run_daemon

runner = CliRunner(env={"COLUMNS": "250"})


@pytest.fixture
async def filled(tmp_path, fixture_server, fast_settings):
    """A config file and the database one `run --once` over the loopback captures made."""
    database = tmp_path / "s.duckdb"
    config = Config(
        watchlist=["AAPL", "MSFT"], batch_size=1, feed_url=fixture_server.feed_url_template, database=database,
        http=fast_settings, pipeline=PipelineSettings(analyze=False, write_interval_seconds=0.05),
    )
    await run_daemon(config, once=True)
    path = tmp_path / "sentimon.toml"
    path.write_text(tomli_w.dumps({"database": str(database), "watchlist": ["AAPL", "MSFT"]}))
    return path


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_init_writes_a_config_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "sentimon.toml"
    assert invoke("init", str(target)).exit_code == 0
    assert "watchlist" in target.read_text()
    again = invoke("init", str(target))
    assert again.exit_code == 2 and "--force" in again.output


def test_init_makes_the_folder_and_names_a_path_it_cannot_write(tmp_path):
    server_layout = tmp_path / "etc" / "sentimon" / "sentimon.toml"
    assert invoke("init", str(server_layout)).exit_code == 0 and server_layout.is_file()
    under_a_file = server_layout / "sentimon.toml"
    result = invoke("init", str(under_a_file))
    assert result.exit_code == 2 and f"cannot write {under_a_file}" in result.output


@pytest.mark.parametrize(
    ("args", "named"),
    [(("articles", "--limit", "0"), "'--limit'"), (("movers", "--limit", "-1"), "'--limit'"),
     (("sentiment", "-t", "AAPL", "--every", "0s"), "'0s': a duration must be more than 0"),
     (("movers", "--window", "0h"), "'0h': a duration must be more than 0")],
)  # fmt: skip
def test_counts_and_spans_below_one_are_refused_before_any_query(tmp_path, args, named):
    config = tmp_path / "s.toml"
    config.write_text(f'database = "{tmp_path / "none.duckdb"}"\n')
    result = invoke(*args, "--config", str(config))
    assert result.exit_code == 2 and named in result.output


def test_bad_config_key_stops_with_the_key_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nper_host_rat = 3\n")
    result = invoke("status", "--config", str(bad))
    assert result.exit_code == 2
    assert "http.per_host_rat: unknown key (did you mean 'per_host_rate'?)" in result.output


def test_status_before_any_run_says_what_to_do(tmp_path):
    config = tmp_path / "s.toml"
    config.write_text(f'database = "{tmp_path / "none.duckdb"}"\n')
    result = invoke("status", "--config", str(config))
    assert result.exit_code == 2 and "run `sentimon run --once`" in result.output


def test_status_and_articles_show_what_the_run_stored(filled):
    status = invoke("status", "--config", str(filled))
    assert status.exit_code == 0
    assert "rss/2.0/headline?s=AAPL" in status.output and "stories" in status.output
    health = json.loads(invoke("status", "--config", str(filled), "--format", "json").stdout)
    assert {tuple(feed["tickers"]) for feed in health["feeds"]} == {("AAPL",), ("MSFT",)}
    assert all(feed["consecutive_errors"] == 0 and datetime.fromisoformat(feed["last_ok"]) for feed in health["feeds"])
    listing = invoke("articles", "--config", str(filled), "--ticker", "msft", "--since", "5000d")
    assert listing.exit_code == 0
    from storage.db import Database

    with Database(filled.parent / "s.duckdb").read() as conn:
        msft = conn.execute("SELECT title FROM articles WHERE list_contains(tickers, 'MSFT')").fetchall()
        stories = conn.execute("SELECT count(*) FROM articles").fetchone()[0]
    assert len(msft) == 2 and all(title[:30] in listing.output for (title,) in msft)
    as_json = json.loads(invoke("articles", "--config", str(filled), "--since", "5000d", "--format", "json").stdout)
    assert len(as_json) == stories == health["database"]["stories"] > len(msft)
    assert all(row["url"].startswith("http") and row["tickers"] for row in as_json)
    assert invoke("articles", "--config", str(filled), "--since", "often").exit_code == 2


def test_sentiment_series_table_and_plot(filled, tmp_path):
    from storage.db import Database

    with Database(tmp_path / "s.duckdb").write() as conn:  # two analyses of stored articles, as the model would write
        conn.execute("""
            INSERT INTO analyses (story_id, content_version, analyzed_at, model, prompt_version, ok, attempts)
            SELECT id, content_version, now(), 'test', '1', true, 1 FROM stories WHERE state = 'page' LIMIT 2""")
        conn.execute("""
            INSERT INTO extractions SELECT id, story_id, 0, 'Apple', 'AAPL', '+', 'Performance', 0.8, 0.9
            FROM analyses""")
        conn.execute("""
            INSERT INTO extractions SELECT id, story_id, 1, 'Apple Inc.', 'AAPL', '-', 'Performance', -0.4, 0.6
            FROM analyses""")  # the same company under a second name, less surely: each article counts once
    plot = tmp_path / "aapl.png"
    result = invoke("sentiment", "--config", str(filled), "--ticker", "AAPL", "--since", "20000d", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "+0.80" in line]  # a day or two, as the stories fall
    counts = [[int(cell) for cell in row.split("│")[-4:-1]] for row in rows]  # articles, positive, negative
    assert sum(articles for articles, _, _ in counts) == 2, result.output
    assert all(positive == articles and negative == 0 for articles, positive, negative in counts)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    unwritable = plot / "aapl.png"  # under a file
    refused = invoke("sentiment", "--config", str(filled), "-t", "AAPL", "--since", "20000d", "--plot", str(unwritable))
    assert refused.exit_code == 2 and f"cannot write {unwritable}" in refused.output
    as_json = runner.invoke(app, ["sentiment", "--config", str(filled), "--ticker", "AAPL", "--since", "20000d",
                                  "--format", "json"])  # fmt: skip
    buckets = json.loads(as_json.stdout)
    assert sum(b["articles"] for b in buckets) == 2 and all(b["score"] == 0.8 for b in buckets)
    assert all(datetime.fromisoformat(b["bucket"]).tzinfo for b in buckets)


def test_an_unknown_output_format_is_named():
    wrong = runner.invoke(app, ["sentiment", "--ticker", "AAPL", "--format", "csv"])
    assert wrong.exit_code == 2 and "'csv' is not one of 'table', 'json'" in wrong.output


def test_reanalyze_runs_the_model_over_every_stored_article(filled, tmp_path):
    from storage.db import Database

    result = invoke("reanalyze", "--config", str(filled), "--since", "20000d", "--batch", "2")
    assert result.exit_code == 0, result.output
    with Database(tmp_path / "s.duckdb").read() as conn:
        stored = conn.execute(
            "SELECT count(*) FROM stories WHERE state <> 'pending' AND duplicate_of IS NULL"
        ).fetchone()[0]
        analyzed = conn.execute("SELECT count(DISTINCT story_id), count(*) FROM analyses").fetchone()
        bodies = conn.execute("SELECT count(*) FROM analyses a JOIN stories s ON s.id = a.story_id "
                              "WHERE a.prompt_tokens > 0").fetchone()[0]  # fmt: skip
    assert stored > 2 and analyzed == (stored, stored) and bodies == stored
    assert f"re-analyzed {stored} articles" in result.output
