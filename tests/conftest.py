"""Shared fixtures: the loopback server of real captures, an HTTP client tuned for fast tests, data paths."""

import gzip
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import monitor.demo
from monitor.demo.server import FixtureServer
from scrapers.http import HttpClient, HttpSettings

DEMO_DATA = Path(monitor.demo.__file__).parent / "data"

# Short backoffs, no per-host rate limit to speak of (every test "host" is 127.0.0.1); the timeout is long
# because no test waits on it (the timeout test sets its own) and a busy CI machine can stall a reply for seconds.
FAST_SETTINGS = HttpSettings(
    timeout_seconds=30.0,
    per_host_concurrency=8,
    per_host_rate=1000.0,
    max_retries=3,
    backoff_base_seconds=0.05,
    backoff_max_seconds=2.0,
)


@pytest.fixture
def demo_data() -> Path:
    return DEMO_DATA


@pytest.fixture
def ground_truth() -> dict[str, dict[str, str]]:
    """SHA-256 file name -> {"url", "articleBody"} for the five captured pages."""
    return json.loads((DEMO_DATA / "html" / "ground-truth.json").read_text(encoding="utf-8"))


@pytest.fixture
def captured_html() -> Callable[[str], str]:
    """The HTML of a captured page, by its SHA-256 file name."""

    def read(name: str) -> str:
        return gzip.decompress((DEMO_DATA / "html" / f"{name}.html.gz").read_bytes()).decode("utf-8")

    return read


@pytest.fixture
def fast_settings() -> HttpSettings:
    return FAST_SETTINGS


@pytest.fixture
async def fixture_server() -> AsyncIterator[FixtureServer]:
    async with FixtureServer() as server:
        yield server


@pytest.fixture
async def http_client(fast_settings: HttpSettings) -> AsyncIterator[HttpClient]:
    async with HttpClient(fast_settings) as client:
        yield client


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a test's DuckDB file goes (not created)."""
    return tmp_path / "sentimon.duckdb"
