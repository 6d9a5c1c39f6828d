"""The Redis store's own behaviour: namespaces, scripts, atomicity across clients, outages."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import reactorthread
from tests.redisproc import RedisServer, free_port
from tests.state.test_store_contract import redis_store, run_in_reactor
from txrelay.state.interfaces import StoreUnavailable
from txrelay.state.redis import RedisAddress, RedisStore


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    redis_server.flush()
    return redis_server


@pytest.fixture
def stores(server: RedisServer) -> Iterator[list[RedisStore]]:
    made: list[RedisStore] = []
    yield made
    for s in made:
        run_in_reactor(s.close())


def test_the_prefix_separates_namespaces(server: RedisServer, stores: list[Any]) -> None:
    a = redis_store(server, prefix="a:", timeout=5.0)
    b = redis_store(server, prefix="b:", timeout=5.0)
    stores += [a, b]
    run_in_reactor(a.increment("n", 5, 60))
    run_in_reactor(b.hash_set("h", "f", b"v"))
    assert run_in_reactor(b.get_count("n")) == 0
    assert run_in_reactor(a.hash_all("h")) == {}
    assert run_in_reactor(a.get_count("n")) == 5


def test_scripts_survive_a_script_flush(server: RedisServer, stores: list[Any]) -> None:
    s = redis_store(server, timeout=5.0)
    stores.append(s)
    assert run_in_reactor(s.acquire("slots", "x", 1, 60))
    with socket.create_connection(("127.0.0.1", server.port)) as c:
        c.sendall(b"SCRIPT FLUSH\r\n")
        assert c.recv(16).startswith(b"+OK")
    # EVALSHA now answers NOSCRIPT: the store falls back to EVAL, and the result is right.
    assert not run_in_reactor(s.acquire("slots", "y", 1, 60))
    assert run_in_reactor(s.holders("slots")) == 1


def test_two_clients_enforce_one_limit_exactly(server: RedisServer,
                                               stores: list[Any]) -> None:
    a = redis_store(server, timeout=5.0)
    b = redis_store(server, timeout=5.0)
    stores += [a, b]

    async def burst() -> list[bool]:
        from twisted.internet.defer import Deferred, gatherResults

        ds = [Deferred.fromCoroutine(s.increment("rpm", 1, 60, limit=25))
              for _ in range(40) for s in (a, b)]
        return [c.allowed for c in await gatherResults(ds)]

    allowed = reactorthread.call(burst)
    assert allowed.count(True) == 25 and len(allowed) == 80
    assert run_in_reactor(a.get_count("rpm")) == 25


def test_an_unreachable_server_raises_store_unavailable() -> None:
    s = reactorthread.call_in_reactor(RedisStore(
        RedisAddress(port=free_port()), reactorthread.reactor(), timeout=0.2).connect)
    try:
        with pytest.raises(StoreUnavailable):
            run_in_reactor(s.increment("c", 1, 60))
        with pytest.raises(StoreUnavailable):
            run_in_reactor(s.ping())
    finally:
        run_in_reactor(s.close())


def test_a_server_that_never_answers_raises_store_unavailable() -> None:
    # Accepts connections, reads nothing, answers nothing: a hung Redis.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    s = reactorthread.call_in_reactor(RedisStore(
        RedisAddress(port=port), reactorthread.reactor(), timeout=0.2).connect)
    try:
        with pytest.raises(StoreUnavailable, match=r"no answer within 0\.2s"):
            run_in_reactor(s.increment("c", 1, 60))
        with pytest.raises(StoreUnavailable):
            run_in_reactor(s.acquire("s", "h", 1, 60))
    finally:
        run_in_reactor(s.close())
        listener.close()


def test_the_store_reconnects_after_the_server_restarts(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    s = redis_store(server, timeout=1.0)
    try:
        assert run_in_reactor(s.increment("c", 1, 60)).value == 1
        server.stop()
        with pytest.raises(StoreUnavailable):
            run_in_reactor(s.increment("c", 1, 60))
        server.start()
        for _ in range(200):  # reconnecting with backoff (at most 2 s apart)
            try:
                run_in_reactor(s.ping())
                break
            except StoreUnavailable:
                time.sleep(0.05)
        # A new server without persistence: the counter starts again.
        assert run_in_reactor(s.increment("c", 1, 60)).value == 1
    finally:
        run_in_reactor(s.close())
        server.stop()


def test_a_url_with_a_password_is_refused() -> None:
    with pytest.raises(ValueError, match=r"state\.password"):
        RedisAddress.from_url("redis://:hunter2@127.0.0.1:6379/0")
    assert str(RedisAddress.from_url("redis://r.example:6380/2")) == "redis://r.example:6380/2"
    with pytest.raises(ValueError, match="redis://"):
        RedisAddress.from_url("http://127.0.0.1")


def test_rediss_verifies_the_server_certificate() -> None:
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

    tls = RedisStore(RedisAddress.from_url("rediss://redis.example:6380/0"), None)._tls()
    assert IOpenSSLClientConnectionCreator.providedBy(tls)
    assert RedisStore(RedisAddress(), None)._tls() is False
