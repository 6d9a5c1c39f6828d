"""FailoverStore over a real Redis that is stopped and started again; building from config."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests import reactorthread
from tests.redisproc import RedisServer, free_port
from tests.state.test_store_contract import run_in_reactor
from txrelay.config import StateConfig
from txrelay.health import Health
from txrelay.state.build import build_state, redis_address
from txrelay.state.failover import FailoverStore, register_metrics
from txrelay.state.interfaces import StoreUnavailable
from txrelay.state.memory import MemoryStore


def _until(condition: Any, what: str) -> None:
    """Wait for ``condition()`` (the probe runs every probe_interval); fail after 30 s."""
    for _ in range(600):
        if reactorthread.call_in_reactor(condition):
            return
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


def _build(server: RedisServer, health: Health, mode: str) -> FailoverStore:
    cfg = StateConfig(kind="redis", url=server.url, timeout=1.0, on_unavailable=mode,  # type: ignore[arg-type]
                      probe_interval=0.1, prefix="failover:")
    store = reactorthread.call_in_reactor(build_state, cfg, reactorthread.reactor(), health)
    assert isinstance(store, FailoverStore)
    return store


def test_open_serves_from_memory_while_redis_is_down_and_comes_back(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    health = Health()
    store = _build(server, health, "open")
    registry = CollectorRegistry()
    register_metrics(registry, store)
    try:
        _until(lambda: health.detail().get("state", {}).get("serving_from") == "redis",
               "the first probe reports redis")
        assert run_in_reactor(store.increment("c", 1, 60)).value == 1
        assert run_in_reactor(store.increment("c", 1, 60)).value == 2
        server.stop()
        # The first failing operation is answered from in-process state at once.
        assert run_in_reactor(store.increment("c", 1, 60)).value == 1
        assert not store.up and health.ready  # open: readiness stays 200
        detail = health.detail()["state"]
        assert detail["serving_from"] == "memory" and detail["up"] is False
        text = generate_latest(registry).decode()
        assert 'txrelay_state_store_up{store="redis"} 0.0' in text
        assert 'txrelay_state_store_failures_total{store="redis"}' in text
        server.start()
        _until(lambda: store.up, "the probe finds redis again")
        assert health.detail()["state"]["serving_from"] == "redis"
        # Redis again (a fresh server: its counter starts over).
        assert run_in_reactor(store.increment("c", 1, 60)).value == 1
        assert 'txrelay_state_store_up{store="redis"} 1.0' in generate_latest(registry).decode()
    finally:
        run_in_reactor(store.close())
        server.stop()


def test_closed_refuses_while_redis_is_down_and_readiness_turns_503(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    health = Health()
    store = _build(server, health, "closed")
    try:
        _until(lambda: health.detail().get("state", {}).get("up") is True, "first probe")
        run_in_reactor(store.set("k", b"v"))
        server.stop()
        with pytest.raises(StoreUnavailable):
            run_in_reactor(store.get("k"))
        with pytest.raises(StoreUnavailable, match="unavailable"):
            run_in_reactor(store.get("k"))  # at once now, without trying the server
        assert not health.ready
        assert health.detail()["state"]["serving_from"] == "none"
        server.start()
        _until(lambda: health.ready, "readiness back once redis answers")
        assert run_in_reactor(store.get("k")) is None  # a fresh server
    finally:
        run_in_reactor(store.close())
        server.stop()


def test_a_relay_started_while_redis_is_down_serves_in_process() -> None:
    health = Health()
    cfg = StateConfig(kind="redis", host="127.0.0.1", port=free_port(), timeout=0.2,
                      probe_interval=0.1)
    store = reactorthread.call_in_reactor(build_state, cfg, reactorthread.reactor(), health)
    try:
        _until(lambda: health.detail()["state"]["up"] is False, "the first probe fails")
        assert run_in_reactor(store.acquire("s", "a", 1, 60))
        assert health.ready and "error" in health.detail()["state"]
    finally:
        run_in_reactor(store.close())


def test_memory_kind_and_addresses() -> None:
    health = Health()
    assert isinstance(build_state(StateConfig(), None, health), MemoryStore)
    assert health.detail()["state"] == {"kind": "memory", "up": True}
    assert str(redis_address(StateConfig(kind="redis"))) == "redis://127.0.0.1:6379/0"
    assert str(redis_address(StateConfig(kind="redis", host="r", port=7000, db=3))) == \
        "redis://r:7000/3"


def test_state_settings_are_restart_only() -> None:
    import attrs

    from txrelay.config import parse_config
    from txrelay.service import _keep_running, restart_only_changes

    raw = {"providers": [{"name": "demo", "kind": "demo"}],
           "models": [{"id": "m", "provider": "demo"}], "pipeline": [{"type": "translate"}]}
    old = parse_config(raw, env={})
    new = parse_config({**raw, "state": {"kind": "redis", "url": "redis://r:6380/1",
                                          "on_unavailable": "closed"}}, env={})
    assert set(restart_only_changes(old, new)) == {"state.kind", "state.url",
                                                   "state.on_unavailable"}
    assert _keep_running(old, new).state == old.state
    assert attrs.evolve(new, state=old.state) == _keep_running(old, new)


def test_the_password_is_a_secret() -> None:
    from txrelay.config import parse_config, secret_values

    raw = {"providers": [{"name": "demo", "kind": "demo"}],
           "models": [{"id": "m", "provider": "demo"}], "pipeline": [{"type": "translate"}],
           "state": {"kind": "redis", "password": {"env": "REDIS_PW"}}}
    cfg = parse_config(raw, env={"REDIS_PW": "s3cret-redis"})
    assert cfg.state.password is not None and cfg.state.password.value == "s3cret-redis"
    assert "s3cret-redis" not in repr(cfg)
    assert "s3cret-redis" in secret_values(cfg, env={})
