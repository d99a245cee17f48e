"""The one HTTP client of the process: polite per host, patient with overloaded servers, strict on body size."""

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from scrapers.backoff import backoff_seconds, retry_after_seconds
from scrapers.throttle import HostThrottle

log = logging.getLogger(__name__)

# Yahoo answers 429 to clients that do not look like a browser.
BROWSER_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
_BROWSER_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-US,en;q=0.9",
}
MAX_REDIRECTS = 10
_CHUNK_BYTES = 64 * 1024


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    user_agent: str = Field(
        BROWSER_USER_AGENT, min_length=1, description="User-Agent sent with every request (Yahoo answers 429 to bots)."
    )
    timeout_seconds: float = Field(20.0, gt=0, description="Give up on one request after this many seconds.")
    max_bytes: int = Field(5_000_000, gt=0, description="Largest page or feed read; bigger bodies are cut off and refused.")
    per_host_concurrency: int = Field(2, gt=0, description="Requests in flight at once to one host.")
    per_host_rate: float = Field(1.0, gt=0, description="Request starts per second to one host.")
    max_retries: int = Field(4, ge=0, description="Retries of 408/429/5xx/network failures before giving up.")
    backoff_base_seconds: float = Field(2.0, gt=0, description="First retry delay; doubles each retry, with jitter.")
    backoff_max_seconds: float = Field(
        300.0, gt=0, description="Longest wait between retries, also the cap on a server's Retry-After."
    )


@dataclass
class HttpResponse:
    url: str  # as requested
    final_url: str  # after redirects
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes


class FetchError(Exception):
    """A URL could not be fetched. `retryable` tells whether trying again later may succeed."""

    def __init__(
        self, url: str, reason: str, *, retryable: bool, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after  # seconds the server asked us to wait, if it said


def _is_retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _host_of(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(url, "not an absolute http(s) URL", retryable=False)
    return parts.hostname


class HttpClient:
    """Async context manager around one aiohttp session; `get` is safe to call from many tasks at once."""

    def __init__(self, settings: HttpSettings) -> None:
        self.settings = settings
        self._throttle = HostThrottle(concurrency=settings.per_host_concurrency, rate=settings.per_host_rate)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": self.settings.user_agent, **_BROWSER_HEADERS},
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(
        self, url: str, *, headers: dict[str, str] | None = None, max_bytes: int | None = None
    ) -> HttpResponse:
        """GET `url`, following up to 10 redirects and retrying 408/429/5xx and network failures.

        Returns 2xx and 304 answers; raises FetchError for anything else. The per-host limits apply to the
        host of `url` (redirect hops are followed inside the same slot).
        """
        return await self._request("GET", url, headers, max_bytes or self.settings.max_bytes)

    async def post(self, url: str, body: bytes, *, content_type: str) -> HttpResponse:
        """POST `body` to `url`, with the limits and retries of `get` (so a 5xx answer may see it twice)."""
        return await self._request("POST", url, {"Content-Type": content_type}, self.settings.max_bytes, body)

    async def _request(
        self, method: str, url: str, headers: dict[str, str] | None, limit: int, data: bytes | None = None
    ) -> HttpResponse:
        if self._session is None:
            raise RuntimeError("HttpClient used outside `async with HttpClient(...)`")
        host = _host_of(url)
        attempts = self.settings.max_retries + 1
        for attempt in range(attempts):
            async with self._throttle.slot(host):
                try:
                    return await self._request_once(self._session, method, url, headers, limit, data)
                except FetchError as exc:
                    if not exc.retryable:
                        raise
                    failure = exc
            if attempt + 1 < attempts:
                delay = backoff_seconds(
                    attempt,
                    base=self.settings.backoff_base_seconds,
                    cap=self.settings.backoff_max_seconds,
                    retry_after=failure.retry_after,
                )
                log.info("retrying %s in %.2f s after: %s", url, delay, failure.reason)
                await asyncio.sleep(delay)
        raise FetchError(
            url,
            f"{failure.reason} (gave up after {attempts} attempts)",
            retryable=True,
            status=failure.status,
            retry_after=failure.retry_after,
        )

    async def _request_once(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        headers: dict[str, str] | None,
        limit: int,
        data: bytes | None,
    ) -> HttpResponse:
        try:
            # aiohttp counts the first response in max_redirects
            async with session.request(
                method, url, headers=headers, data=data, max_redirects=MAX_REDIRECTS + 1
            ) as resp:
                if resp.status != 304 and not 200 <= resp.status < 300:
                    raise FetchError(
                        url,
                        f"HTTP {resp.status} {resp.reason or ''}".rstrip(),
                        retryable=_is_retryable_status(resp.status),
                        status=resp.status,
                        retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
                    )
                body = await _read_capped(resp, url, limit)
                final_url = str(resp.url) if resp.history else url  # untouched spelling when not redirected
                return HttpResponse(url, final_url, resp.status, resp.headers, body)
        except aiohttp.TooManyRedirects:
            raise FetchError(url, f"more than {MAX_REDIRECTS} redirects", retryable=False) from None
        except aiohttp.InvalidURL as exc:
            raise FetchError(url, f"invalid URL: {exc}", retryable=False) from None
        except TimeoutError:
            reason = f"no complete answer within {self.settings.timeout_seconds:g} s (timed out)"
            raise FetchError(url, reason, retryable=True) from None
        except aiohttp.ClientConnectorDNSError as exc:
            reason = f"connection failed: cannot resolve {exc.host} ({_os_reason(exc)})"
            raise FetchError(url, reason, retryable=True) from None
        except aiohttp.ClientConnectorError as exc:
            reason = f"connection failed: cannot connect to {exc.host}:{exc.port} ({_os_reason(exc)})"
            raise FetchError(url, reason, retryable=True) from None
        except aiohttp.ClientError as exc:
            raise FetchError(url, f"connection failed: {exc!r}", retryable=True) from None


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    return exc.os_error.strerror or str(exc.os_error)


async def _read_capped(resp: aiohttp.ClientResponse, url: str, limit: int) -> bytes:
    """Read the (decompressed) body, aborting the download as soon as it passes `limit` bytes."""
    too_large = FetchError(url, f"body larger than {limit} bytes", retryable=False, status=resp.status)
    if resp.content_length is not None and resp.content_length > limit:
        resp.close()
        raise too_large
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            resp.close()  # drop the connection instead of draining the rest
            raise too_large
    return b"".join(chunks)
