# -*- test-case-name: tests.state.test_failover -*-
"""Building the state store ``[state]`` asks for, once per process (it outlives reloads)."""

from __future__ import annotations

from typing import Any

from txrelay.config import StateConfig
from txrelay.state.memory import MemoryStore
from txrelay.state.redis import RedisAddress, RedisStore


def redis_address(cfg: StateConfig) -> RedisAddress:
    """The server ``cfg`` names (``url``, else host/port/db, else 127.0.0.1:6379/0)."""
    if cfg.url is not None:
        return RedisAddress.from_url(cfg.url)
    return RedisAddress(cfg.host or "127.0.0.1", cfg.port or 6379, cfg.db or 0)


def redis_store(cfg: StateConfig, reactor: Any) -> RedisStore:
    """A connecting :class:`RedisStore` for ``cfg`` (no failover: the ``keys`` command)."""
    password = cfg.password.value if cfg.password is not None else None
    return RedisStore(redis_address(cfg), reactor, password=password or None,
                      prefix=cfg.prefix, timeout=cfg.timeout, tls=cfg.tls).connect()


def build_state(cfg: StateConfig, reactor: Any, health: Any = None) -> Any:
    """
    The relay's store: a :class:`MemoryStore`, or Redis behind a
    :class:`~txrelay.state.failover.FailoverStore` that is started (it probes the server
    and reports to ``health`` at once).
    """
    if cfg.kind == "memory":
        if health is not None:
            health.report("state", {"kind": "memory", "up": True})
        return MemoryStore()
    from txrelay.state.failover import FailoverStore

    primary = redis_store(cfg, reactor)
    store = FailoverStore(primary, reactor, health, cfg.on_unavailable, cfg.probe_interval,
                          where=str(primary.address))
    store.start()
    return store
