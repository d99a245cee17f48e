"""How long to wait before retrying a request: the server's Retry-After when it gives one, else
exponential backoff with jitter."""

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse as naive; HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_seconds(attempt: int, *, base: float, cap: float, retry_after: float | None = None) -> float:
    """Delay before retry number `attempt` (0 for the first retry), never more than `cap`.

    Without Retry-After the delay is drawn from [d/2, d] with d = base * 2**attempt, so that clients that
    failed together do not all come back at the same instant.
    """
    if retry_after is not None:
        return min(retry_after, cap)
    ceiling = min(cap, base * 2**attempt)
    return random.uniform(ceiling / 2, ceiling)
