"""HttpClient against a real loopback server: headers, retries, redirects, size cap, time-out, politeness."""

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web

from monitor.demo.server import FixtureServer
from scrapers.backoff import backoff_seconds, retry_after_seconds
from scrapers.http import FetchError, HttpClient, HttpSettings

MSFT_FEED = "/rss/2.0/headline?s=MSFT"


class Recorder:
    """Server-side record of when each request arrived (monotonic clock of this process)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.headers: list[dict[str, str]] = []

    def note(self, request: web.Request) -> int:
        self.times.append(time.monotonic())
        self.headers.append(dict(request.headers))
        return len(self.times)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


def server_with(*routes: tuple[str, object]) -> FixtureServer:
    server = FixtureServer()
    for path, handler in routes:
        server.app.router.add_get(path, handler)
    return server


async def test_get_returns_body_status_and_headers(fixture_server, http_client):
    url = fixture_server.base_url + MSFT_FEED
    resp = await http_client.get(url)
    assert resp.status == 200
    assert resp.url == resp.final_url == url
    assert resp.body.startswith(b"<rss")
    assert resp.headers["content-type"].startswith("application/rss+xml")


async def test_sends_browser_headers_which_yahoo_requires(http_client):
    seen = Recorder()

    async def yahoo_like(request: web.Request) -> web.Response:
        seen.note(request)
        if "Mozilla/5.0" not in request.headers.get("User-Agent", ""):
            return web.Response(status=429, text="Too Many Requests")
        return web.Response(text="ok")

    async with server_with(("/feed", yahoo_like)) as server:
        resp = await http_client.get(server.base_url + "/feed", headers={"Accept": "application/rss+xml"})
    assert resp.body == b"ok"
    assert len(seen.times) == 1
    assert "text/html" not in seen.headers[0]["Accept"]  # caller's header wins
    assert seen.headers[0]["Accept-Language"].startswith("en")


async def test_304_is_a_response_not_an_error(fixture_server, http_client):
    url = fixture_server.base_url + MSFT_FEED
    etag = (await http_client.get(url)).headers["ETag"]
    resp = await http_client.get(url, headers={"If-None-Match": etag})
    assert (resp.status, resp.body) == (304, b"")


@pytest.mark.parametrize(
    ("status", "retry_after", "backoff_max", "expected_wait"),
    [(429, "1", 2.0, 1.0), (503, "3600", 0.2, 0.2)],
    ids=["429-retry-after", "503-retry-after-capped"],
)
async def test_retry_after_is_honoured_up_to_backoff_max(
    fast_settings, status, retry_after, backoff_max, expected_wait
):
    seen = Recorder()

    async def busy_once(request: web.Request) -> web.Response:
        if seen.note(request) == 1:
            return web.Response(status=status, headers={"Retry-After": retry_after})
        return web.Response(text="finally")

    settings = fast_settings.model_copy(update=dict(backoff_max_seconds=backoff_max))
    async with server_with(("/busy", busy_once)) as server, HttpClient(settings) as client:
        resp = await client.get(server.base_url + "/busy")
    assert resp.body == b"finally"
    assert len(seen.times) == 2
    # Exponential backoff alone would have waited at most 0.05 s here.
    assert seen.gaps()[0] >= expected_wait - 0.02


async def test_5xx_backs_off_exponentially_then_gives_up(http_client, fast_settings):
    seen = Recorder()

    async def broken(request: web.Request) -> web.Response:
        seen.note(request)
        return web.Response(status=503, text="down")

    async with server_with(("/down", broken)) as server:
        with pytest.raises(FetchError) as caught:
            await http_client.get(server.base_url + "/down")
    error = caught.value
    assert error.retryable and error.status == 503
    assert "HTTP 503" in error.reason and "gave up after 4 attempts" in error.reason
    assert len(seen.times) == fast_settings.max_retries + 1
    for attempt, gap in enumerate(seen.gaps()):
        assert gap >= fast_settings.backoff_base_seconds * 2**attempt / 2


async def test_other_4xx_fails_at_once(fixture_server, http_client):
    with pytest.raises(FetchError) as caught:
        await http_client.get(fixture_server.base_url + "/www.example.com/no-such-story")
    assert (caught.value.status, caught.value.retryable) == (404, False)
    assert "gave up" not in caught.value.reason


async def test_follows_a_redirect_chain_and_keeps_the_final_url(http_client):
    def hop(target: str):
        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(target)

        return redirect

    routes = [("/hop1", hop("/hop2")), ("/hop2", hop("/hop3")), ("/hop3", hop(MSFT_FEED))]
    async with server_with(*routes) as server:
        resp = await http_client.get(server.base_url + "/hop1")
    assert resp.url == server.base_url + "/hop1"
    assert resp.final_url == server.base_url + MSFT_FEED
    assert b"Latest Financial News for msft" in resp.body


async def test_redirect_loop_is_not_retried(http_client):
    seen = Recorder()

    async def loop(request: web.Request) -> web.Response:
        seen.note(request)
        raise web.HTTPFound("/loop")

    async with server_with(("/loop", loop)) as server:
        with pytest.raises(FetchError, match="more than 10 redirects") as caught:
            await http_client.get(server.base_url + "/loop")
    assert not caught.value.retryable
    assert len(seen.times) == 11


FIFTY_MB = 50_000_000


@pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content-length"])
async def test_body_over_the_cap_is_aborted_without_reading_it_all(http_client, fast_settings, declare_length):
    sent = 0
    done = asyncio.Event()

    async def huge(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        if declare_length:
            resp.content_length = FIFTY_MB
        await resp.prepare(request)
        chunk = b"<p>" + b"x" * (64 * 1024 - 3)
        try:
            while sent < FIFTY_MB:
                await resp.write(chunk)
                sent += len(chunk)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            done.set()
        return resp

    async with server_with(("/huge", huge)) as server:
        with pytest.raises(FetchError, match=f"body larger than {fast_settings.max_bytes} bytes") as caught:
            await http_client.get(server.base_url + "/huge")
        await asyncio.wait_for(done.wait(), 10)
    assert not caught.value.retryable
    print(f"server got {sent:,} of {FIFTY_MB:,} bytes out before the client hung up")
    assert sent < FIFTY_MB / 2


async def test_max_bytes_can_be_lowered_per_request(fixture_server, http_client):
    with pytest.raises(FetchError, match="body larger than 100 bytes"):
        await http_client.get(fixture_server.base_url + MSFT_FEED, max_bytes=100)


async def test_a_server_that_never_answers_times_out(fast_settings):
    seen = Recorder()

    async def silent(request: web.Request) -> web.Response:
        seen.note(request)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    settings = fast_settings.model_copy(update=dict(timeout_seconds=0.3, max_retries=1))
    async with server_with(("/silent", silent)) as server, HttpClient(settings) as client:
        with pytest.raises(FetchError, match="timed out") as caught:
            await client.get(server.base_url + "/silent")
    assert caught.value.retryable
    assert "gave up after 2 attempts" in caught.value.reason
    assert len(seen.times) == 2


async def test_connection_refused_is_retryable(http_client):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FetchError, match=f"connection failed: cannot connect to 127.0.0.1:{port} ") as caught:
        await http_client.get(f"http://127.0.0.1:{port}/feed")
    assert caught.value.retryable


async def test_a_host_that_does_not_resolve_is_named(http_client):
    with pytest.raises(FetchError, match="connection failed: cannot resolve no-such-host.invalid ") as caught:
        await http_client.get("http://no-such-host.invalid/feed")  # .invalid never resolves (RFC 2606)
    assert caught.value.retryable and "ClientConnector" not in caught.value.reason


@pytest.mark.parametrize("url", ["ftp://example.com/feed", "finance.yahoo.com/rss", ""])
async def test_rejects_what_is_not_an_http_url(http_client, url):
    with pytest.raises(FetchError, match="not an absolute http") as caught:
        await http_client.get(url)
    assert not caught.value.retryable


async def test_per_host_concurrency_is_bounded(fast_settings):
    in_flight = peak = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.1)
        in_flight -= 1
        return web.Response(text="ok")

    settings = fast_settings.model_copy(update=dict(per_host_concurrency=2))
    async with server_with(("/slow", slow)) as server, HttpClient(settings) as client:
        await asyncio.gather(*(client.get(server.base_url + "/slow") for _ in range(6)))
    assert peak == 2


async def test_per_host_rate_spaces_request_starts(fast_settings):
    seen = Recorder()

    async def quick(request: web.Request) -> web.Response:
        seen.note(request)
        return web.Response(text="ok")

    settings = fast_settings.model_copy(update=dict(per_host_rate=10.0))
    async with server_with(("/quick", quick)) as server, HttpClient(settings) as client:
        await asyncio.gather(*(client.get(server.base_url + "/quick") for _ in range(5)))
    # 5 starts at 10/s span 0.4 s; unthrottled they arrive within milliseconds. The slack absorbs a loaded machine.
    assert seen.times[-1] - seen.times[0] >= 0.3


async def test_get_outside_the_context_manager_is_an_error(fast_settings):
    with pytest.raises(RuntimeError, match="outside `async with"):
        await HttpClient(fast_settings).get("http://127.0.0.1:1/")


@pytest.mark.parametrize(
    ("field", "value"),
    [("per_host_rate", 0), ("timeout_seconds", -1), ("max_bytes", 0), ("max_retries", -1), ("user_agent", " ")],
)
def test_settings_reject_nonsense_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        HttpSettings(**{field: value})


def test_retry_after_reads_seconds_and_http_dates():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now=now) == 120
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30
    assert retry_after_seconds(format_datetime(now - timedelta(hours=1), usegmt=True), now=now) == 0
    assert retry_after_seconds("soon", now=now) is None
    assert retry_after_seconds(None) is None


def test_backoff_grows_with_jitter_and_respects_the_cap():
    for attempt in range(4):
        ceiling = 2.0 * 2**attempt
        assert ceiling / 2 <= backoff_seconds(attempt, base=2.0, cap=300) <= ceiling
    assert backoff_seconds(20, base=2.0, cap=300) <= 300
    assert backoff_seconds(0, base=2.0, cap=300, retry_after=7) == 7
    assert backoff_seconds(0, base=2.0, cap=300, retry_after=3600) == 300
