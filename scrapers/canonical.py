"""One spelling per article URL, so the same story reached through different feeds is stored once."""

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}

# Query parameters that only say where a click came from. Yahoo adds `.tsrc=rss` to every feed link and
# `guccounter`/`guce_*` after its consent redirect; the rest are the usual campaign trackers.
_TRACKING_PARAMS = frozenset({".tsrc", "guccounter", "guce_referrer", "guce_referrer_sig", "fbclid", "gclid", "ncid"})


def _is_tracking(name: str) -> bool:
    name = name.lower()
    return name.startswith("utm_") or name in _TRACKING_PARAMS


def canonical_url(url: str) -> str:
    """Normalise `url`: lowercase scheme and host, no `www.`, no default port, no fragment, no tracking
    parameters, remaining query parameters sorted, no trailing slash (the bare host keeps `/`).

    Raises ValueError when `url` is not an absolute http(s) URL.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    host = parts.hostname.removeprefix("www.")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in URL {url!r}: {exc}") from None
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = parts.path.rstrip("/") or "/"
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _is_tracking(k))
    return urlunsplit((scheme, netloc, path, urlencode(query), ""))
