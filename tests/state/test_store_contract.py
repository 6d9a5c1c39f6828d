# -*- test-case-name: tests.state.test_store_contract -*-
"""
The :class:`~txrelay.state.interfaces.IStateStore` contract, run against every
implementation: add one to the ``store`` fixture's params and it must pass all of these.

The in-process store runs on a fake clock, synchronously. The Redis store runs against a
real ``redis-server`` (tests/redisproc.py) from the reactor, running in a thread
(tests/reactorthread.py); Redis expires keys by its own clock, so for it ``advance`` really
waits and the tests' durations are scaled by ``unit`` (0.1 s: every expiry checked still
has seconds of margin on a loaded machine, in the direction where lateness could matter).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from zope.interface.verify import verifyObject

from tests import reactorthread
from tests.redisproc import RedisServer
from txrelay.state.interfaces import IStateStore
from txrelay.state.memory import MemoryStore
from txrelay.state.redis import RedisAddress, RedisStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


Run = Callable[[Coroutine[Any, Any, Any]], Any]
Advance = Callable[[float], None]


def run_now(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine of the in-process store to its end (it never waits on I/O)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine waited on something")


def run_in_reactor(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine in the reactor thread and wait for its result."""
    return reactorthread.call(lambda: coro)


def redis_store(server: RedisServer, **kwargs: Any) -> RedisStore:
    """A connected :class:`RedisStore` on ``server`` (built in the reactor thread)."""
    r = reactorthread.reactor()
    store = RedisStore(RedisAddress.from_url(server.url), r, **kwargs)
    return reactorthread.call_in_reactor(store.connect)  # type: ignore[no-any-return]



@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def unit(kind: str) -> float:
    """Seconds per unit of the tests' durations."""
    return 0.1 if kind == "redis" else 1.0


@pytest.fixture
def store(kind: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    if kind == "memory":
        yield MemoryStore(clock=request.getfixturevalue("clock"))
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    s = redis_store(server, prefix="contract:", timeout=5.0)
    yield s
    run_in_reactor(s.close())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def run(kind: str) -> Run:
    return run_now if kind == "memory" else run_in_reactor


@pytest.fixture
def advance(kind: str, unit: float, request: pytest.FixtureRequest) -> Advance:
    if kind == "redis":
        return lambda units: time.sleep(units * unit)
    clock: FakeClock = request.getfixturevalue("clock")

    def go(units: float) -> None:
        clock.now += units
    return go


def test_provides_the_interface(store: Any) -> None:
    assert verifyObject(IStateStore, store)


def test_increment_without_limit_counts(store: Any, run: Run) -> None:
    assert run(store.increment("c", 3, 60)).value == 3
    got = run(store.increment("c", 4, 60))
    assert (got.allowed, got.value) == (True, 7)
    assert run(store.get_count("c")) == 7


def test_increment_refuses_past_the_limit_and_leaves_the_counter(store: Any, run: Run) -> None:
    assert run(store.increment("c", 9, 60, limit=10)).allowed
    refused = run(store.increment("c", 2, 60, limit=10))
    assert (refused.allowed, refused.value) == (False, 9)
    assert run(store.increment("c", 1, 60, limit=10)).value == 10
    assert run(store.increment("c", -3, 60, limit=10)).value == 7


def test_counter_expires_ttl_after_creation_not_after_each_increment(
        store: Any, run: Run, advance: Advance, unit: float) -> None:
    run(store.increment("c", 1, 60 * unit))
    advance(40)
    got = run(store.increment("c", 1, 60 * unit))
    assert got.value == 2 and got.ttl is not None and got.ttl <= 20.5 * unit
    advance(21)
    assert run(store.get_count("c")) == 0
    assert run(store.increment("c", 1, 60 * unit)).value == 1


def test_slots_are_bounded_renewable_and_expire(
        store: Any, run: Run, advance: Advance, unit: float) -> None:
    assert run(store.acquire("s", "a", 2, 30 * unit))
    assert run(store.acquire("s", "b", 2, 30 * unit))
    assert not run(store.acquire("s", "c", 2, 30 * unit))
    assert run(store.acquire("s", "a", 2, 30 * unit))  # a holder renews its own slot
    assert run(store.holders("s")) == 2
    run(store.release("s", "b"))
    assert run(store.acquire("s", "c", 2, 30 * unit))
    advance(31)
    assert run(store.holders("s")) == 0


def test_values_expire_and_delete(
        store: Any, run: Run, advance: Advance, unit: float) -> None:
    run(store.set("v", b"x", ttl=10 * unit))
    run(store.set("w", b"y"))
    assert run(store.get("v")) == b"x"
    advance(11)
    assert run(store.get("v")) is None
    assert run(store.get("w")) == b"y"
    run(store.delete("w"))
    assert run(store.get("w")) is None


def test_hashes(store: Any, run: Run) -> None:
    assert run(store.hash_all("h")) == {}
    run(store.hash_set("h", "a", b"1"))
    run(store.hash_set("h", "b", b"2"))
    run(store.hash_delete("h", "a"))
    assert run(store.hash_all("h")) == {"b": b"2"}


def test_binary_values_round_trip(store: Any, run: Run) -> None:
    blob = bytes(range(256))
    run(store.set("v", blob))
    run(store.hash_set("h", "f", blob))
    assert run(store.get("v")) == blob
    assert run(store.hash_all("h")) == {"f": blob}


def test_ping_and_close(store: Any, run: Run) -> None:
    assert run(store.ping()) is None
    run(store.close())
