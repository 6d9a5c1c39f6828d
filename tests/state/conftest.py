"""Fixtures of the state store tests: one real Redis server for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redisproc import RedisServer, start_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real ``redis-server`` on loopback for the whole session (fails if not installed)."""
    server = start_redis()
    yield server
    server.stop()
