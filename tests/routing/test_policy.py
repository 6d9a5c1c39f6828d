"""Target order, retryable errors, retry-after and backoff (sans-IO)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from txrelay.protocol.errors import RelayError, connection_error, invalid_request
from txrelay.routing.policy import (
    Backoff,
    RetryPolicy,
    Target,
    counts_against_target,
    is_retryable,
    next_wait,
    order_targets,
    parse_retry_after,
    retry_after_of,
)

A = Target("a", "pa", "m-a")
B = Target("b", "pb", "m-b")
C = Target("c", "pc", "m-c", priority=1)


def test_retryable_errors_are_the_upstreams_fault() -> None:
    assert is_retryable(connection_error("refused", upstream="x"))
    assert is_retryable(RelayError("rate_limit_error", "slow down"))
    assert is_retryable(RelayError("overloaded_error", "busy"))
    assert is_retryable(RelayError("timeout_error", "no first byte"))
    assert is_retryable(RelayError("api_error", "boom", status=503))
    assert not is_retryable(invalid_request("bad"))
    assert not is_retryable(RelayError("authentication_error", "no"))
    assert not is_retryable(RelayError("not_found_error", "no such model"))
    # a 429 cools a key; it says nothing about the target's health
    assert not counts_against_target(RelayError("rate_limit_error", "slow down"))
    assert counts_against_target(RelayError("overloaded_error", "busy"))


def test_retry_after_seconds_dates_and_garbage() -> None:
    assert parse_retry_after("7", 0) == 7
    assert parse_retry_after(" 1.5 ", 0) == 1.5
    assert parse_retry_after("-3", 0) == 0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", 1445412480.0) == 10
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490.0) == 0
    assert parse_retry_after("soon", 0) is None
    assert parse_retry_after("nan", 0) is None
    assert parse_retry_after("", 0) is None
    assert parse_retry_after(None, 0) is None
    err = RelayError("rate_limit_error", "x", headers=(("Retry-After", "4"),))
    assert retry_after_of(err, 0) == 4
    err = RelayError("rate_limit_error", "x",
                     headers=(("retry-after", "4"), ("retry-after-ms", "250")))
    assert retry_after_of(err, 0) == 0.25


@given(st.text(max_size=40), st.floats(allow_nan=False, allow_infinity=False,
                                       min_value=0, max_value=4e9))
def test_retry_after_never_raises_nor_goes_negative(value: str, now: float) -> None:
    parsed = parse_retry_after(value, now)
    assert parsed is None or parsed >= 0


@given(st.integers(min_value=1, max_value=30), st.floats(min_value=0, max_value=1))
def test_backoff_is_jittered_below_its_capped_exponential(retry: int, u: float) -> None:
    b = Backoff(0.25, 4.0)
    delay = b.delay(retry, lambda: u)
    assert 0 <= delay <= min(4.0, 0.25 * 2 ** (retry - 1))
    assert b.delay(retry, lambda: 1.0) == min(4.0, 0.25 * 2 ** (retry - 1))


def test_waits_honour_retry_after_up_to_the_cap() -> None:
    policy = RetryPolicy(3, Backoff(0.25, 4.0), max_retry_after=10)
    assert next_wait(policy, 1, False, 99, lambda: 1.0) == 0  # a fresh target: at once
    assert next_wait(policy, 1, True, None, lambda: 1.0) == 0.25
    assert next_wait(policy, 2, True, 3.0, lambda: 1.0) == 3.0
    assert next_wait(policy, 1, True, 11.0, lambda: 1.0) is None


def test_priorities_come_first_and_affinity_leads() -> None:
    rnd = random.Random(1).random
    for _ in range(50):
        order = order_targets([C, A, B], rnd)
        assert order[2] is C and {order[0], order[1]} == {A, B}
    assert order_targets([C, A, B], rnd, preferred="c")[0] is C
    assert order_targets([A, B], rnd, preferred="gone") in ([A, B], [B, A])


@given(st.randoms(use_true_random=False))
def test_order_is_a_permutation(rnd: random.Random) -> None:
    targets = [A, B, C, Target("d", "pd", "m", weight=0.01)]
    order = order_targets(targets, rnd.random)
    assert sorted(t.name for t in order) == ["a", "b", "c", "d"]


def test_weights_share_the_first_place() -> None:
    heavy = Target("heavy", "p", "m", weight=3)
    light = Target("light", "p", "m", weight=1)
    rnd = random.Random(7).random
    firsts = Counter(order_targets([heavy, light], rnd)[0].name for _ in range(4000))
    # P(heavy first) = 3/4 for a weighted draw without replacement
    assert 2800 < firsts["heavy"] < 3200
