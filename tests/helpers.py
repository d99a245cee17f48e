"""Small building blocks for tests: routes for the loopback server, labelled records written as JSONL, the
daemon as its own process."""

import asyncio
import gzip
import json
import os
import sys
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).parents[1]
ARTICLE_PAGES = sorted((ROOT / "monitor/demo/data/html").glob("*.html.gz"))


def page(index: int) -> bytes:
    """One of the five captured article pages, as served."""
    return gzip.decompress(ARTICLE_PAGES[index].read_bytes())


def rss(items: list[tuple[str, str]]) -> str:
    """A minimal RSS 2.0 document with (title, link) items."""
    body = "".join(f"<item><title>{title}</title><link>{link}</link></item>" for title, link in items)
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{body}</channel></rss>'


def serve(make_response):
    """A route handler answering a fresh response each time."""

    async def handler(request: web.Request) -> web.Response:
        return make_response()

    return handler


def html(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="text/html", charset="utf-8")


def add_feed_of_pages(server, indexes: list[int], path: str = "/pages.xml") -> str:
    """Add (before the server starts) a feed listing captured pages at their own URLs; returns the feed's path."""
    for index in indexes:
        server.app.router.add_get(f"/page/{index}", serve(lambda index=index: html(page(index))))
    server.app.router.add_get(path, serve(lambda: web.Response(
        text=rss([(f"Story {i}", f"{server.base_url}/page/{i}") for i in indexes]), content_type="application/rss+xml")))
    return path


def extraction(entity: str, polarity: str = "+", category: str = "Performance") -> dict:
    return {"entity": entity, "polarity": polarity, "category": category}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


async def start_daemon(config: Path, *args: str, **env: str) -> asyncio.subprocess.Process:
    """`sentimon run --config CONFIG ARGS` in a process of its own, stdout and stderr piped; `env` adds variables."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor.cli", "run", "--config", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )
