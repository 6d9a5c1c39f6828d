"""The circuit breaker's state machine (sans-IO, fake clock)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from txrelay.routing import breaker as br

POLICY = br.BreakerPolicy(failures=3, window=10.0, cooldown=30.0)


def test_closed_open_half_open_and_again() -> None:
    assert br.state_of(None, 0) == "closed"
    assert not br.should_open(2, POLICY)
    assert br.should_open(3, POLICY)
    record = br.opened(100.0, POLICY)
    assert br.state_of(record, 100.0) == "open"
    assert br.state_of(record, 129.9) == "open"
    assert br.state_of(record, 130.0) == "half_open"
    again = br.opened(130.0, POLICY, record)  # the probe failed
    assert again.trips == 2 and br.state_of(again, 131.0) == "open"


def test_a_disabled_breaker_never_opens() -> None:
    assert not br.should_open(1000, br.BreakerPolicy(enabled=False))


def test_records_round_trip_and_garbage_reads_as_closed() -> None:
    record = br.BreakerRecord(1.5, 31.5, 2)
    assert br.BreakerRecord.decode(record.encode()) == record
    assert br.BreakerRecord.decode(b"{") is None
    assert br.BreakerRecord.decode(b'{"until": "x"}') is None


@given(st.floats(min_value=0, max_value=1e10))
def test_windows_are_fixed(now: float) -> None:
    w = br.window_of(now, POLICY)
    assert w * POLICY.window <= now < (w + 1) * POLICY.window + 1e-6
