"""Human durations on the command line: 90s, 30m, 12h, 7d, 2w."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: use a number and a unit, like 90s, 30m, 12h, 7d or 2w")
    span = timedelta(**{_UNITS[match.group(2).lower()]: float(match.group(1))})
    if span <= timedelta(0):
        raise ValueError(f"{text!r}: a duration must be more than 0")
    return span
