"""Reading "since when" from the command line: a span back from now (`7d`) or a point in time.

Reports and backtests look back over stored verdicts; people think in spans ("the last week"), scripts
in timestamps. Both come out as one timezone-aware UTC datetime, so the queries compare like with like.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

_SPAN = re.compile(r"(\d+)\s*([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
EXAMPLES = "30m, 12h, 7d, 2w, 2026-11-20 or 2026-11-20T08:00:00+01:00"


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`text` as a UTC datetime: `<n>m|h|d|w` before `now` (default: the current time), or an ISO 8601
    date (midnight) or datetime. Naive values are taken as UTC. Raises ValueError naming what is accepted."""
    value = text.strip()
    span = _SPAN.fullmatch(value)
    if span:
        amount = int(span.group(1))
        if amount == 0:
            raise ValueError(f"since {text!r}: the span must be positive (accepted: {EXAMPLES})")
        reference = now or datetime.now(timezone.utc)
        return _as_utc(reference) - timedelta(**{_UNITS[span.group(2)]: amount})
    try:
        if len(value) == 10:  # a bare date: its midnight
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        # Python 3.10's fromisoformat does not read the "Z" suffix.
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value)
    except ValueError:
        raise ValueError(f"since {text!r}: not a span or an ISO 8601 date/datetime (accepted: {EXAMPLES})") from None
    return _as_utc(parsed)


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
