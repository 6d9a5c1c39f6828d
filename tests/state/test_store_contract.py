# -*- test-case-name: tests.state.test_store_contract -*-
"""
The :class:`~txrelay.state.interfaces.IStateStore` contract, run against every
implementation: add one to the ``store`` fixture's params and it must pass all of these.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from zope.interface.verify import verifyObject

from txrelay.state.interfaces import IStateStore
from txrelay.state.memory import MemoryStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory"])
def store(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryStore(clock=clock)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine of the in-process store to its end (it never waits on I/O)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine waited on something")


Advance = Callable[[float], None]


@pytest.fixture
def advance(clock: FakeClock) -> Advance:
    def go(seconds: float) -> None:
        clock.now += seconds
    return go


def test_provides_the_interface(store: Any) -> None:
    assert verifyObject(IStateStore, store)


def test_increment_without_limit_counts(store: Any) -> None:
    assert run(store.increment("c", 3, 60)).value == 3
    got = run(store.increment("c", 4, 60))
    assert (got.allowed, got.value) == (True, 7)
    assert run(store.get_count("c")) == 7


def test_increment_refuses_past_the_limit_and_leaves_the_counter(store: Any) -> None:
    assert run(store.increment("c", 9, 60, limit=10)).allowed
    refused = run(store.increment("c", 2, 60, limit=10))
    assert (refused.allowed, refused.value) == (False, 9)
    assert run(store.increment("c", 1, 60, limit=10)).value == 10


def test_counter_expires_ttl_after_creation_not_after_each_increment(
        store: Any, advance: Advance) -> None:
    run(store.increment("c", 1, 60))
    advance(40)
    got = run(store.increment("c", 1, 60))
    assert got.value == 2 and got.ttl is not None and got.ttl <= 20.5
    advance(21)
    assert run(store.get_count("c")) == 0
    assert run(store.increment("c", 1, 60)).value == 1


def test_slots_are_bounded_renewable_and_expire(store: Any, advance: Advance) -> None:
    assert run(store.acquire("s", "a", 2, 30))
    assert run(store.acquire("s", "b", 2, 30))
    assert not run(store.acquire("s", "c", 2, 30))
    assert run(store.acquire("s", "a", 2, 30))  # a holder renews its own slot
    assert run(store.holders("s")) == 2
    run(store.release("s", "b"))
    assert run(store.acquire("s", "c", 2, 30))
    advance(31)
    assert run(store.holders("s")) == 0


def test_values_expire_and_delete(store: Any, advance: Advance) -> None:
    run(store.set("v", b"x", ttl=10))
    run(store.set("w", b"y"))
    assert run(store.get("v")) == b"x"
    advance(11)
    assert run(store.get("v")) is None
    assert run(store.get("w")) == b"y"
    run(store.delete("w"))
    assert run(store.get("w")) is None


def test_hashes(store: Any) -> None:
    assert run(store.hash_all("h")) == {}
    run(store.hash_set("h", "a", b"1"))
    run(store.hash_set("h", "b", b"2"))
    run(store.hash_delete("h", "a"))
    assert run(store.hash_all("h")) == {"b": b"2"}


def test_ping_and_close(store: Any) -> None:
    assert run(store.ping()) is None
    run(store.close())
