# -*- test-case-name: tests.stages.test_limits_pure -*-
"""UTC calendar periods for budgets: a day runs from midnight UTC, a month from the 1st."""

from __future__ import annotations

import datetime as dt
import functools
import math
from typing import Literal

Period = Literal["day", "month"]

_UTC = dt.UTC


def period_id(now: float, period: Period) -> str:
    """The name of the period holding ``now``: ``20261202`` for a day, ``202612`` a month."""
    t = dt.datetime.fromtimestamp(now, _UTC)
    return f"{t:%Y%m%d}" if period == "day" else f"{t:%Y%m}"


def period_end(now: float, period: Period) -> float:
    """When the period holding ``now`` ends (epoch seconds): the next one's start."""
    t = dt.datetime.fromtimestamp(now, _UTC)
    if period == "day":
        start = dt.datetime(t.year, t.month, t.day, tzinfo=_UTC)
        return (start + dt.timedelta(days=1)).timestamp()
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return dt.datetime(year, month, 1, tzinfo=_UTC).timestamp()


def rfc3339(when: float) -> str:
    """``when`` as RFC 3339 UTC to the second, rounded up (``2026-12-03T00:00:00Z``)."""
    return _rfc3339(math.ceil(when))


@functools.lru_cache(maxsize=64)
def _rfc3339(whole: int) -> str:
    return dt.datetime.fromtimestamp(whole, _UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
