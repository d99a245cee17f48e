"""The Prometheus endpoint of a real daemon process (real model, loopback captures), read with Prometheus's own
text parser."""

import asyncio
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest
import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import ConfigError, load_config
from monitor.demo.server import FixtureServer
from helpers import add_feed_of_pages, start_daemon


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(path: Path, feed_url: str, db_path: Path, listen: str) -> Path:
    path.write_text(tomli_w.dumps({
        "watchlist": [], "extra_feeds": [feed_url],
        "database": str(db_path), "poll_interval_seconds": 3600,
        "pipeline": {"write_interval_seconds": 0.05}, "metrics": {"listen": listen},
    }))  # fmt: skip
    return path


async def scrape(url: str) -> dict[str, list]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(metrics: dict[str, list], family: str, sample: str | None = None, **labels: str) -> float:
    [match] = [s.value for s in metrics[family] if s.name == (sample or family) and s.labels == labels]
    return match


@pytest.mark.slow
async def test_running_daemon_serves_its_counters_queues_and_model(tmp_path, db_path):
    server = FixtureServer(tickers=[])
    feed = add_feed_of_pages(server, [0, 2])
    listen = f"127.0.0.1:{free_port()}"
    async with server:
        process = await start_daemon(write_config(tmp_path / "s.toml", server.base_url + feed, db_path, listen))
        try:
            deadline = time.monotonic() + 180
            while True:
                assert process.returncode is None, (await process.stderr.read()).decode()
                try:
                    metrics = await scrape(f"http://{listen}/metrics")
                    if value(metrics, "sentimon_analyzed", "sentimon_analyzed_total") == 2:
                        break
                except aiohttp.ClientConnectionError:
                    pass  # still loading the model
                assert time.monotonic() < deadline, "the daemon never reported two analyses"
                await asyncio.sleep(0.5)
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()

    assert value(metrics, "sentimon_polls", "sentimon_polls_total") == 1
    assert value(metrics, "sentimon_poll_errors", "sentimon_poll_errors_total") == 0
    assert value(metrics, "sentimon_pages_stored", "sentimon_pages_stored_total") == 2
    assert value(metrics, "sentimon_analysis_seconds", "sentimon_analysis_seconds_count") == 2
    assert value(metrics, "sentimon_analysis_seconds", "sentimon_analysis_seconds_sum") > 0
    assert value(metrics, "sentimon_model_tokens", "sentimon_model_tokens_total", kind="prompt") > 100
    assert value(metrics, "sentimon_model_tokens", "sentimon_model_tokens_total", kind="completion") > 0
    assert {s.labels["stage"] for s in metrics["sentimon_queue_depth"]} == {"fetch", "extract", "store", "analyze",
                                                                           "alert"}  # fmt: skip
    assert 0 < time.time() - value(metrics, "sentimon_last_successful_poll_timestamp_seconds") < 300
    assert value(metrics, "sentimon_db_write_batches", "sentimon_db_write_batches_total") > 0
    [model] = metrics["sentimon_model_info"]
    assert model.labels["adapter"].endswith("default.gguf") and model.labels["model"]
    assert value(metrics, "process_resident_memory_bytes") > 50e6


async def test_a_taken_port_stops_the_start_with_the_setting_named(tmp_path, db_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        config = write_config(tmp_path / "s.toml", "http://127.0.0.1:9/feed.xml", db_path, listen)
        process = await start_daemon(config, "--once", SENTIMON_PIPELINE__ANALYZE="false")
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode != 0
    assert f"metrics.listen {listen}: cannot listen there" in stderr.decode()


@pytest.mark.parametrize("listen", ["9108", "localhost:", "localhost:99999", ":9108"])
def test_a_bad_listen_address_is_named(tmp_path, listen):
    config = tmp_path / "s.toml"
    config.write_text(tomli_w.dumps({"metrics": {"listen": listen}}))
    with pytest.raises(ConfigError, match=r"metrics\.listen: .*HOST:PORT"):
        load_config(config, environ={})
