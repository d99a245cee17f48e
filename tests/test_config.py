import re
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


def file_error(tmp_path, text: str) -> str:
    """The ConfigError message for a config file holding `text`, with no SENTIMON_ variables."""
    file = tmp_path / "s.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    return str(caught.value)


def test_named_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml", environ={})


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    message = file_error(tmp_path, 'watchlist = ["AAPL"]\npoll_intervall_seconds = 60\n[http]\ntimeout_secs = 3\n')
    assert "poll_intervall_seconds: unknown key (did you mean 'poll_interval_seconds'?)" in message
    assert "http.timeout_secs: unknown key (did you mean 'timeout_seconds'?)" in message


def test_bad_value_names_key_and_value(tmp_path):
    message = file_error(tmp_path, 'poll_interval_seconds = "often"\nfeed_url = "https://example.com/rss"\n')
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


def test_error_from_a_variable_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file: the built-in defaults plus the environment
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"SENTIMON_HTTP__PER_HOST_RATE": "abc"})
    message = str(caught.value)
    assert message.startswith("the environment:\n")
    assert "  SENTIMON_HTTP__PER_HOST_RATE (http.per_host_rate): Input should be a valid number" in message
    assert "built-in defaults" not in message


def test_errors_from_file_and_variables_name_each_origin(tmp_path):
    file = tmp_path / "s.toml"
    file.write_text("poll_jitter = 5\n")
    environ = {"SENTIMON_FOO": "1", "SENTIMON_POLL_INTERVALL_SECONDS": "60", "SENTIMON_WATCHLIST": "AAPL"}
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ=environ)
    message = str(caught.value)
    assert message.startswith(f"{file} and the environment:\n")
    assert "\n  poll_jitter: Input should be less than or equal to 1" in message
    assert "\n  SENTIMON_FOO (foo): unknown key (known keys: watchlist," in message
    assert (
        "\n  SENTIMON_POLL_INTERVALL_SECONDS (poll_intervall_seconds): unknown key "
        "(did you mean 'poll_interval_seconds'?)"
    ) in message


def test_variables_are_read_as_the_type_of_their_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    environ = {
        "SENTIMON_WATCHLIST": "aapl",
        "SENTIMON_ALERTS__COMMAND": "/usr/bin/notify",
        "SENTIMON_HTTP__USER_AGENT": "Mozilla/5.0 (X11, Linux)",
        "SENTIMON_DATABASE": "2024",
        "SENTIMON_MODEL__MODEL": "123",
        "SENTIMON_HTTP__PER_HOST_RATE": "0.5",
        "SENTIMON_PIPELINE__ANALYZE": "false",
        "SENTIMON_TRAINING__EVAL_LIMIT": "5",
        "SENTIMON_ALIASES__ALPHABET": "googl",
        "SENTIMON_TRAINING__LORA": '{"rank": 8}',
    }
    config = load_config(None, environ=environ)
    assert config.watchlist == ["AAPL"]
    assert config.alerts.command == ["/usr/bin/notify"]
    assert config.http.user_agent == "Mozilla/5.0 (X11, Linux)"
    assert config.database == Path("2024")
    assert config.model.model == "123"
    assert config.http.per_host_rate == 0.5
    assert config.pipeline.analyze is False
    assert config.training.eval_limit == 5
    assert config.aliases == {"alphabet": "googl"}
    assert config.training.lora == {"rank": 8}
    environ = {"SENTIMON_ALERTS__COMMAND": '["notify", "--to", "a,b"]', "SENTIMON_TRAINING__LORA__EPOCHS": "2"}
    config = load_config(None, environ=environ)
    assert config.alerts.command == ["notify", "--to", "a,b"]
    assert config.training.lora == {"epochs": 2}


def test_value_errors_read_without_pydantics_prefix(tmp_path):
    message = file_error(tmp_path, '[training]\nschedule = "0 3 * * 1"\n')
    assert "  training.schedule: write the weekday by name" in message
    assert "Value error" not in message


def test_empty_sentimon_config_variable_counts_as_unset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(None, environ={"SENTIMON_CONFIG": ""}) == Config()
    (tmp_path / "sentimon.toml").write_text("batch_size = 3\n")
    assert load_config(None, environ={"SENTIMON_CONFIG": ""}).batch_size == 3


def test_init_template_takes_a_table_added_as_the_readme_says(tmp_path):
    file = tmp_path / "sentimon.toml"
    file.write_text(default_config_text() + '\n[aliases]\n"Alphabet Class A" = "GOOGL"\n')
    assert load_config(file, environ={}).aliases == {"Alphabet Class A": "GOOGL"}


def test_init_template_loads_with_every_commented_key_and_table_uncommented(tmp_path):
    text = default_config_text()
    assert "= {}" not in text and not re.search(r"^# [\w.]+ =$", text, re.MULTILINE)
    commented = re.compile(r'# ((?:[\w.]+|"[^"]*") = .*|\[[\w.]+\])$')
    lines = [match[1] if (match := commented.fullmatch(line)) else line for line in text.splitlines()]
    assert "[aliases]" in lines and 'listen = "127.0.0.1:9108"' in lines
    file = tmp_path / "sentimon.toml"
    file.write_text("\n".join(lines) + "\n")
    config = load_config(file, environ={})
    assert config.aliases and config.training.lora and config.model.adapter and config.training.eval_limit
    assert config.alerts.webhook_url and config.alerts.command and config.metrics.listen
