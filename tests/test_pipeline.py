"""The ingestion path end to end: real loopback server of captures -> the real pipeline -> a real DuckDB file."""

import asyncio
import re
import signal
from pathlib import Path

import tomli_w
from aiohttp import web

from monitor.config import Config, PipelineSettings
from monitor.daemon import run_daemon
from monitor.demo.server import FixtureServer
from storage.db import Database
from helpers import ARTICLE_PAGES, html, page, rss, serve, start_daemon



def config_for(server: FixtureServer, db_path: Path, fast_settings, **overrides) -> Config:
    pipeline = {"analyze": False, "write_interval_seconds": 0.05, "page_retry_delay_seconds": 3600,
                **overrides.pop("pipeline", {})}
    return Config(
        feed_url=server.feed_url_template,
        database=db_path,
        http=fast_settings,
        pipeline=PipelineSettings(**pipeline),
        **{"watchlist": ["MSFT", "AAPL", "NVDA"], "batch_size": 2, **overrides},
    )


def rows(db_path: Path, sql: str, params=()) -> list[tuple]:
    with Database(db_path).read() as conn:
        return conn.execute(sql, list(params)).fetchall()


async def test_run_once_stores_every_story_once_with_its_tickers(fixture_server, db_path, fast_settings):
    config = config_for(fixture_server, db_path, fast_settings)
    summary = await run_daemon(config, once=True)

    assert summary.stats.poll_errors == 0
    # AAPL and NVDA carry the same five generated stories; MSFT's capture adds two items whose pages are copies.
    articles = rows(db_path, "SELECT canonical_url, tickers, body_origin, duplicate_of, length(body) FROM articles")
    assert len(articles) == 7
    shared = [a for a in articles if a[1] == ["AAPL", "MSFT", "NVDA"]]  # batched feed: tickers of the batch
    assert len(shared) == 5 and all(a[2] == "page" and a[4] > 500 for a in shared)
    copies = [a for a in articles if a[3] is not None]
    assert len(copies) == 2, "the MSFT capture's links serve pages already stored under other URLs"
    assert rows(db_path, "SELECT count(*) FROM stories WHERE state = 'pending'") == [(0,)]
    feeds = rows(db_path, "SELECT url, etag IS NOT NULL, consecutive_errors FROM feeds ORDER BY url")
    assert [f[1:] for f in feeds] == [(True, 0), (True, 0)]


async def test_second_run_uses_conditional_get_and_adds_nothing(fixture_server, db_path, fast_settings):
    config = config_for(fixture_server, db_path, fast_settings)
    await run_daemon(config, once=True)
    summary = await run_daemon(config, once=True)
    assert summary.stats.stories_new == 0 and summary.stats.pages_stored == 0
    assert rows(db_path, "SELECT count(*) FROM stories") == [(7,)]


async def test_feed_errors_are_reported_and_other_feeds_still_land(db_path, fast_settings):
    server = FixtureServer()
    server.app.router.add_get("/consent", serve(lambda: web.Response(
        text="<html><body><form action='https://consent.yahoo.com/v2/collectConsent'>Accept all</form></body></html>",
        content_type="text/html")))
    server.app.router.add_get("/garbage.xml", serve(lambda: web.Response(body=b"\x00\x01 not xml", content_type="application/rss+xml")))
    async with server:
        config = config_for(
            server, db_path, fast_settings, watchlist=["AAPL"],
            extra_feeds=[server.base_url + "/consent", server.base_url + "/garbage.xml"],
        )
        summary = await run_daemon(config, once=True)
    assert summary.stats.poll_errors == 2
    errors = dict(rows(db_path, "SELECT url, last_error FROM feeds WHERE last_error IS NOT NULL"))
    assert "HTML" in errors[server.base_url + "/consent"]
    assert len(errors) == 2
    assert rows(db_path, "SELECT count(*) FROM articles") == [(5,)]


async def test_unavailable_page_keeps_feed_text_and_schedules_a_bounded_retry(db_path, fast_settings):
    server = FixtureServer(tickers=[])
    server.app.router.add_get("/paywalled.xml", serve(lambda: web.Response(
        text=rss([("Paywalled scoop on Nvidia", server.base_url + "/wsj/scoop")]), content_type="application/rss+xml")))
    server.app.router.add_get("/wsj/scoop", serve(lambda: web.Response(status=403, text="subscribe")))
    async with server:
        config = config_for(server, db_path, fast_settings, watchlist=["ZZZZ"],
                            extra_feeds=[server.base_url + "/paywalled.xml"], pipeline={"page_retries": 1})
        await run_daemon(config, once=True)
        ((origin, body, attempts, retry_at),) = rows(
            db_path, "SELECT state, body, fetch_attempts, next_fetch_at FROM stories")
        assert origin == "feed" and attempts == 1
        assert rows(db_path, "SELECT body FROM articles") == [("Paywalled scoop on Nvidia",)]
        assert retry_at is not None, "a 403 (paywall, bot wall) is tried again later"
        assert "403" in rows(db_path, "SELECT last_error FROM stories")[0][0]

        again = await run_daemon(config, once=True)  # the retry is not due yet: nothing is fetched
        assert again.stats.page_failures == 0
        with Database(db_path).write() as conn:
            conn.execute("UPDATE stories SET next_fetch_at = now() - INTERVAL 1 MINUTE")
        await run_daemon(config, once=True)  # due now: tried, fails again, and that was the last try
        assert rows(db_path, "SELECT fetch_attempts, next_fetch_at FROM stories") == [(2, None)]


async def test_syndicated_copy_under_another_url_is_linked_to_the_first(db_path, fast_settings):
    original = page(0)
    syndicated = original.replace(b"<body", b"<body><div>Syndicated from a partner site</div>", 1)
    server = FixtureServer(tickers=[])
    server.app.router.add_get("/partner.xml", serve(lambda: web.Response(text=rss([
        ("Original", server.base_url + "/origin/story"), ("Copy", server.base_url + "/partner/other-url")]),
        content_type="application/rss+xml")))
    server.app.router.add_get("/origin/story", serve(lambda: html(original)))
    server.app.router.add_get("/partner/other-url", serve(lambda: html(syndicated)))
    async with server:
        config = config_for(server, db_path, fast_settings, watchlist=["ZZZZ"],
                            extra_feeds=[server.base_url + "/partner.xml"], pipeline={"fetch_concurrency": 1})
        await run_daemon(config, once=True)
    stored = rows(db_path, "SELECT id, url, duplicate_of FROM articles ORDER BY id")
    assert len(stored) == 2
    (first_id, _, first_dup), (_, _, second_dup) = stored
    assert first_dup is None and second_dup == first_id


# -- the daemon as a process: SIGTERM and kill -9 ----------------------------------------------------------------

SLOW_STORIES = 12


def slow_server(delay: float) -> FixtureServer:
    """A feed of SLOW_STORIES distinct stories whose pages take `delay` seconds each."""
    server = FixtureServer(tickers=[])
    bodies = [page(i % len(ARTICLE_PAGES)).replace(b"<body", f"<body><p>Story {i}</p>".encode(), 1)
              for i in range(SLOW_STORIES)]

    async def article(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return html(bodies[int(request.match_info["n"])])

    server.app.router.add_get("/slow.xml", serve(lambda: web.Response(
        text=rss([(f"Story {i}", f"{server.base_url}/slow/{i}") for i in range(SLOW_STORIES)]),
        content_type="application/rss+xml")))
    server.app.router.add_get("/slow/{n}", article)
    return server


def write_config(path: Path, server: FixtureServer, db_path: Path, grace: float) -> Path:
    path.write_text(tomli_w.dumps({
        "watchlist": [], "feed_url": server.feed_url_template, "extra_feeds": [server.base_url + "/slow.xml"],
        "database": str(db_path), "poll_interval_seconds": 3600, "log_level": "INFO",
        "http": {"per_host_concurrency": 2, "per_host_rate": 100.0},
        "pipeline": {"analyze": False, "fetch_concurrency": 2, "write_interval_seconds": 0.05,
                     "shutdown_grace_seconds": grace},
    }))
    return path


async def wait_for(db_path: Path, sql: str, predicate, timeout: float = 60.0):
    """Poll the database the way a user would while the daemon runs: short read-only connections."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if db_path.exists():
            value = await asyncio.to_thread(rows, db_path, sql)
            if predicate(value[0][0]):
                return value[0][0]
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting on {sql}"
        await asyncio.sleep(0.1)


def assert_each_story_stored_once(db_path: Path) -> None:
    assert rows(db_path, "SELECT count(*), count(DISTINCT canonical_url) FROM stories") == [
        (SLOW_STORIES, SLOW_STORIES)]
    assert rows(db_path, "SELECT count(*) FROM stories WHERE state = 'pending'") == [(0,)]
    assert rows(db_path, "SELECT max(content_version) FROM stories") == [(1,)]


async def test_sigterm_mid_run_exits_zero_and_a_restart_finishes_the_rest(tmp_path, db_path):
    async with slow_server(delay=0.5) as server:
        config = write_config(tmp_path / "s.toml", server, db_path, grace=10)
        daemon = await start_daemon(config)
        await wait_for(db_path, "SELECT count(*) FROM stories WHERE state = 'page'", lambda n: n >= 2)
        daemon.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(daemon.communicate(), 30)
        assert daemon.returncode == 0, stderr.decode()
        assert b"stopping" in stderr
        accepted = rows(db_path, "SELECT count(*) FROM stories")[0][0]
        assert accepted == SLOW_STORIES, "every story the feed yielded was accepted before the stop"

        restart = await start_daemon(config, "--once")
        _, stderr = await asyncio.wait_for(restart.communicate(), 60)
        assert restart.returncode == 0, stderr.decode()
    assert_each_story_stored_once(db_path)


async def test_kill_9_mid_run_then_restart_loses_and_duplicates_nothing(tmp_path, db_path):
    async with slow_server(delay=0.5) as server:
        config = write_config(tmp_path / "s.toml", server, db_path, grace=10)
        daemon = await start_daemon(config)
        await wait_for(db_path, "SELECT count(*) FROM stories WHERE state = 'page'", lambda n: n >= 2)
        daemon.kill()
        await daemon.wait()
        assert daemon.returncode == -signal.SIGKILL

        restart = await start_daemon(config, "--once")
        _, stderr = await asyncio.wait_for(restart.communicate(), 60)
        assert restart.returncode == 0, stderr.decode()
    assert_each_story_stored_once(db_path)


def watchlist_config(path: Path, server: FixtureServer, db_path: Path, watchlist: list[str], **extra) -> Path:
    path.write_text(tomli_w.dumps({
        "watchlist": watchlist, "batch_size": 1, "feed_url": server.feed_url_template, "database": str(db_path),
        "poll_interval_seconds": 3600, "pipeline": {"analyze": False, "write_interval_seconds": 0.05}, **extra,
    }))
    return path


async def test_sighup_follows_the_edited_watchlist_and_a_broken_edit_changes_nothing(tmp_path, db_path):
    polled = "SELECT list_sort(flatten(list(tickers))) FROM feeds WHERE last_ok_at IS NOT NULL"
    aapl_polled_at = "SELECT last_polled_at FROM feeds WHERE tickers = ['AAPL']"
    async with FixtureServer() as server:
        config = watchlist_config(tmp_path / "s.toml", server, db_path, ["AAPL"])
        daemon = await start_daemon(config)
        await wait_for(db_path, polled, lambda tickers: tickers == ["AAPL"])
        first_aapl_poll = rows(db_path, aapl_polled_at)

        watchlist_config(config, server, db_path, ["AAPL", "MSFT"], http={"per_host_rate": 5.0})
        daemon.send_signal(signal.SIGHUP)
        await wait_for(db_path, polled, lambda tickers: tickers == ["AAPL", "MSFT"])
        assert rows(db_path, aapl_polled_at) == first_aapl_poll, "a kept feed keeps its schedule"

        log = await logged_until(daemon, "config reloaded")
        assert "http.per_host_rate changed; that takes effect at the next start" in log
        assert "config reloaded: feeds 1 added, 0 removed, 2 polled now (watchlist of 2)" in log

        watchlist_config(config, server, db_path, ["MSFT"])
        daemon.send_signal(signal.SIGHUP)
        assert "feeds 0 added, 1 removed, 1 polled now (watchlist of 1)" in await logged_until(daemon, "config reloaded")

        config.write_text(config.read_text() + "pol_interval_seconds = 60\n")
        daemon.send_signal(signal.SIGHUP)
        log = await logged_until(daemon, "config reload failed, still running the previous one")
        assert "pol_interval_seconds: unknown key" in log
        await asyncio.sleep(0.5)
        assert daemon.returncode is None, "a broken config does not stop the daemon"
        daemon.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(daemon.communicate(), 30)
    assert daemon.returncode == 0, stderr.decode()


async def logged_until(daemon: asyncio.subprocess.Process, text: str, timeout: float = 30.0) -> str:
    """The daemon's log lines from here up to and including the first that contains `text`."""
    lines = []
    while not lines or text not in lines[-1]:
        line = await asyncio.wait_for(daemon.stderr.readline(), timeout)
        assert line, f"the daemon exited before logging {text!r}: {''.join(lines)}"
        lines.append(line.decode())
    return "".join(lines)


async def test_a_stop_during_a_poll_ends_it_without_an_error(tmp_path, db_path):
    """Ctrl-C while a feed request hangs: the poll is cancelled, which is no job failure and no traceback."""
    server = FixtureServer()
    requested = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        requested.set()
        await asyncio.sleep(60)
        return web.Response(text="")

    server.app.router.add_get("/hang.xml", hang)
    async with server:
        config = watchlist_config(tmp_path / "s.toml", server, db_path, [], extra_feeds=[server.base_url + "/hang.xml"])
        daemon = await start_daemon(config)
        await asyncio.wait_for(requested.wait(), 30)
        daemon.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(daemon.communicate(), 30)
    log = stderr.decode()
    assert daemon.returncode == 0, log
    assert "Traceback" not in log and "raised an exception" not in log
    assert "poll stopped: the daemon is shutting down" in log and re.search(r"stopped: \d+ polls", log)
