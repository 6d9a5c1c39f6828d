"""The sans-IO parts of the limits stage: windows, periods, prices and headers."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from txrelay.limits.headers import Reading, ratelimit_headers, retry_after
from txrelay.limits.periods import period_end, period_id, rfc3339
from txrelay.limits.prices import ModelPrice, PriceTable, dollars, total_tokens
from txrelay.limits.windows import (
    Window,
    capacity,
    carried,
    remaining,
    replenished_at,
    wait_for,
)

LENGTH = 60.0


def fits(limit: int, prev: int, cur: int, amount: int, now: float, later: float) -> bool:
    """Whether ``amount`` fits at ``later`` when the counters were ``prev``/``cur`` at
    ``now`` and nothing else was counted."""
    w0, w1 = Window.at(now, LENGTH), Window.at(later, LENGTH)
    if w1.index == w0.index:
        p, c = prev, cur
    elif w1.index == w0.index + 1:
        p, c = cur, 0
    else:
        p, c = 0, 0
    return amount <= capacity(limit, p, w1) - c


def test_window_boundaries() -> None:
    w = Window.at(120.0, LENGTH)
    assert (w.index, w.elapsed, w.prev_weight) == (2, 0.0, 1.0)
    w = Window.at(150.0, LENGTH)
    assert (w.index, w.elapsed, w.start, w.prev_weight) == (2, 30.0, 120.0, 0.5)
    assert carried(3, w) == 2  # 1.5 rounds up
    assert carried(4, w) == 2  # exactly 2, not 3
    assert capacity(10, 4, w) == 8
    assert remaining(10, 4, 8, w) == 0
    assert remaining(10, 4, 9, w) == 0


@given(limit=st.integers(1, 1000), prev=st.integers(0, 1000), cur=st.integers(0, 1000),
       amount=st.integers(1, 1200),
       now=st.floats(0, 10_000, allow_nan=False, allow_infinity=False))
def test_wait_for_is_when_it_fits(limit: int, prev: int, cur: int, amount: int,
                                  now: float) -> None:
    wait = wait_for(limit, prev, cur, amount, Window.at(now, LENGTH))
    if amount > limit:
        assert wait is None
        return
    assert wait is not None and 0 <= wait <= 2 * LENGTH
    # A hair after the wait it fits; clearly before it, it does not.
    assert fits(limit, prev, cur, amount, now, now + wait + 1e-6)
    if wait > 0.01:
        assert not fits(limit, prev, cur, amount, now, now + wait - 0.01)


@given(limit=st.integers(1, 100), now=st.floats(0, 10_000, allow_nan=False),
       spacing=st.floats(0.01, 30))
def test_sliding_window_bounds(limit: int, now: float, spacing: float) -> None:
    """
    Requests as fast as the window allows: each calendar minute holds at most ``limit``,
    any 60 s at most twice that (a burst at the end of one minute and the start of the
    next), and the long-run rate is ``limit`` a minute.
    """
    counts: dict[int, int] = {}
    admitted: list[float] = []
    t = now
    for _ in range(3 * limit + 10):
        w = Window.at(t, LENGTH)
        prev, cur = counts.get(w.index - 1, 0), counts.get(w.index, 0)
        if cur + 1 <= capacity(limit, prev, w):
            counts[w.index] = cur + 1
            admitted.append(t)
        t += spacing
    assert max(counts.values()) <= limit
    for i, start in enumerate(admitted):
        assert len([a for a in admitted[i:] if a < start + LENGTH]) <= 2 * limit
    assert len(admitted) <= limit * ((t - now) / LENGTH + 1)


def test_replenished_at() -> None:
    w = Window.at(150.0, LENGTH)
    assert replenished_at(0, 0, w) == 150.0
    assert replenished_at(5, 0, w) == 180.0
    assert replenished_at(5, 1, w) == 240.0


def test_periods() -> None:
    t = dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp()
    assert period_id(t, "day") == "20261231"
    assert period_id(t, "month") == "202612"
    assert rfc3339(period_end(t, "day")) == "2027-01-01T00:00:00Z"
    assert rfc3339(period_end(t, "month")) == "2027-01-01T00:00:00Z"
    feb = dt.datetime(2028, 2, 10, 5, tzinfo=dt.UTC).timestamp()
    assert rfc3339(period_end(feb, "month")) == "2028-03-01T00:00:00Z"
    assert rfc3339(feb + 0.2) == "2028-02-10T05:00:01Z"  # rounded up


@given(st.floats(0, 4e9, allow_nan=False))
def test_period_end_is_the_next_period(now: float) -> None:
    for period in ("day", "month"):
        end = period_end(now, period)
        assert end > now
        assert period_id(end, period) != period_id(now, period)
        assert period_id(end - 0.001, period) == period_id(now, period)


def test_prices() -> None:
    sonnet = ModelPrice("claude-sonnet-*", input=3, output=15)
    usage = {"input_tokens": 1000, "output_tokens": 200, "cache_read_input_tokens": 10_000,
             "cache_creation_input_tokens": 2000}
    # 1000*3 + 200*15 + 10000*0.3 + 2000*3.75 µ$
    assert sonnet.micro_cost(usage) == 3000 + 3000 + 3000 + 7500
    explicit = ModelPrice("x", input=1, output=2, cache_read=0, cache_write=0)
    assert explicit.micro_cost(usage) == 1000 + 400
    assert total_tokens(usage) == 13_200
    assert total_tokens({"input_tokens": True, "output_tokens": -3}) == 0
    table = PriceTable((sonnet, ModelPrice("*", input=1)))
    assert table.find(None, "claude-sonnet-4-6") is sonnet
    assert table.find("gpt-4o") == ModelPrice("*", input=1)
    assert PriceTable().find("a") is None
    assert dollars(12_345_678) == "$12.35"
    assert dollars(500) == "$0.0005"
    assert dollars(0) == "$0.00"


@given(st.dictionaries(st.sampled_from(["input_tokens", "output_tokens",
                                        "cache_read_input_tokens",
                                        "cache_creation_input_tokens"]),
                       st.integers(0, 10**7)),
       st.floats(0, 100), st.floats(0, 100))
def test_cost_is_monotonic_in_usage(usage: dict[str, int], pin: float, pout: float) -> None:
    price = ModelPrice("*", input=pin, output=pout)
    more = {k: v + 1000 for k, v in usage.items()}
    assert 0 <= price.micro_cost(usage) <= price.micro_cost(more)


def test_headers_pick_the_tightest() -> None:
    readings = [
        Reading("requests", 50, 49, 120.0),
        Reading("requests", 5, 2, 180.0),  # the group's, tighter
        Reading("input-tokens", 10_000, 9000, 120.0),
        Reading("output-tokens", 2000, 100, 120.0),
    ]
    headers = dict(ratelimit_headers(readings))
    assert headers["anthropic-ratelimit-requests-limit"] == "5"
    assert headers["anthropic-ratelimit-requests-remaining"] == "2"
    assert headers["anthropic-ratelimit-requests-reset"] == "1970-01-01T00:03:00Z"
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "9000"
    assert headers["anthropic-ratelimit-output-tokens-limit"] == "2000"
    assert headers["anthropic-ratelimit-tokens-limit"] == "2000"  # output is tighter
    assert headers["anthropic-ratelimit-tokens-remaining"] == "100"
    assert ratelimit_headers([]) == []
    only_rpm = dict(ratelimit_headers(readings[:1]))
    assert "anthropic-ratelimit-tokens-limit" not in only_rpm


def test_retry_after_is_whole_seconds() -> None:
    assert retry_after(0) == "1"
    assert retry_after(1.0) == "1"
    assert retry_after(1.2) == "2"
    assert retry_after(59.99) == "60"
