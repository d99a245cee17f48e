import tomllib
from pathlib import Path

import pytest

from monitor.config import Config, ConfigError, load_config
from monitor.config_template import default_config_text


def test_no_file_runs_builtin_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None, environ={})
    assert config == Config()
    assert "{symbols}" in config.feed_url


def test_named_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml", environ={})


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    file = tmp_path / "s.toml"
    file.write_text('watchlist = ["AAPL"]\npoll_intervall_seconds = 60\n[http]\ntimeout_secs = 3\n')
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    message = str(caught.value)
    assert "poll_intervall_seconds: unknown key (did you mean 'poll_interval_seconds'?)" in message
    assert "http.timeout_secs: unknown key (did you mean 'timeout_seconds'?)" in message


def test_bad_value_names_key_and_value(tmp_path):
    file = tmp_path / "s.toml"
    file.write_text('poll_interval_seconds = "often"\nfeed_url = "https://example.com/rss"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    message = str(caught.value)
    assert "poll_interval_seconds" in message and "'often'" in message
    assert "feed_url" in message and "{symbols}" in message


def test_invalid_toml_is_reported_with_the_file(tmp_path):
    file = tmp_path / "s.toml"
    file.write_text("watchlist = [AAPL\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(file, environ={})


def test_environment_overrides_file(tmp_path):
    file = tmp_path / "s.toml"
    file.write_text('watchlist = ["AAPL"]\n[pipeline]\nqueue_size = 5\n')
    config = load_config(
        file,
        environ={
            "SENTIMON_WATCHLIST": "msft, nvda",
            "SENTIMON_PIPELINE__QUEUE_SIZE": "7",
            "SENTIMON_DATABASE": str(tmp_path / "x.duckdb"),
            "SENTIMON_CACHE": str(tmp_path / "models"),  # the model cache: not a config key
        },
    )
    assert config.watchlist == ["MSFT", "NVDA"]
    assert config.pipeline.queue_size == 7
    assert config.database == tmp_path / "x.duckdb"


def test_sentimon_config_variable_names_the_file(tmp_path, monkeypatch):
    file = tmp_path / "elsewhere.toml"
    file.write_text("batch_size = 3\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(None, environ={"SENTIMON_CONFIG": str(file)}).batch_size == 3


def test_feeds_batch_the_watchlist_and_add_extra_feeds():
    config = Config(
        watchlist=["aapl", "MSFT", "NVDA", "AAPL"], batch_size=2, feed_url="http://h/rss?s={symbols}",
        extra_feeds=["http://h/other.xml"],
    )
    assert config.feeds() == [
        ("http://h/rss?s=AAPL,MSFT", ("AAPL", "MSFT")),
        ("http://h/rss?s=NVDA", ("NVDA",)),
        ("http://h/other.xml", ()),
    ]


def test_init_template_is_commented_and_loads_back_to_the_defaults(tmp_path):
    text = default_config_text()
    assert "# Tickers to follow." in text and "[http]" in text and "[model]" in text
    file = tmp_path / "sentimon.toml"
    file.write_text(text)
    tomllib.loads(text)
    assert load_config(file, environ={}) == Config()
