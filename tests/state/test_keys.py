"""Managed client keys: records, the relay's local copy, and the auth stage admitting them."""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock

from tests.state.test_store_contract import FakeClock, run_now
from txrelay.config import hash_key
from txrelay.keys import (
    KEYS_HASH,
    KeyInfo,
    ManagedKey,
    ManagedKeys,
    add_key,
    key_table,
    load_keys,
    remove_key,
    rotate_key,
    set_state,
)
from txrelay.stages.auth import AuthStage
from txrelay.state.interfaces import StoreUnavailable
from txrelay.state.memory import MemoryStore
from txrelay.testing import make_exchange, run_stage


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return run_now(coro)


@attrs.define(eq=False)
class CountingStore(MemoryStore):
    """A MemoryStore counting reads of hashes, which can be made unavailable."""

    reads: int = 0
    down: bool = False

    async def hash_all(self, key: str) -> Mapping[str, bytes]:
        self.reads += 1
        if self.down:
            raise StoreUnavailable("down")
        return await super().hash_all(key)


class Relay:
    """A MemoryStore, a ManagedKeys on a fake reactor and monotonic clock, an AuthStage."""

    def __init__(self) -> None:
        self.store = CountingStore()
        self.reactor = Clock()
        self.now = FakeClock()
        self.keys = ManagedKeys(self.store, self.reactor, refresh=5.0, miss_refresh=1.0,
                                reserved=frozenset({"alice"}), clock=self.now)
        self.keys.start()
        self.stage = AuthStage({"alice": bytes.fromhex(hash_key("config-key"))},
                               managed=self.keys)

    def advance(self, seconds: float) -> None:
        self.now.now += seconds
        self.reactor.advance(seconds)

    def admitted(self, key: str) -> str | None:
        exchange = make_exchange(headers={"x-api-key": key})
        result = run_stage(self.stage, exchange)
        return None if result.error is not None else exchange.client


@pytest.fixture
def relay() -> Relay:
    return Relay()


def test_records_round_trip_and_never_hold_the_key(relay: Relay) -> None:
    record, key = run(add_key(relay.store, "ci-bot", ("team-a",), ("claude-*",)))
    assert key.startswith("txr-") and len(key) > 40
    raw = run(relay.store.hash_all(KEYS_HASH))["ci-bot"]
    assert key.encode() not in raw and record.sha256 == hash_key(key)
    assert ManagedKey.from_json("ci-bot", raw) == record
    with pytest.raises(ValueError, match="exists"):
        run(add_key(relay.store, "ci-bot"))
    table = key_table(run(load_keys(relay.store)))
    assert "ci-bot" in table and "team-a" in table and key not in table
    assert record.sha256 not in table


def test_a_bad_record_is_skipped(relay: Relay) -> None:
    run(relay.store.hash_set(KEYS_HASH, "junk", b"{not json"))
    run(relay.store.hash_set(KEYS_HASH, "half", b'{"state": "active"}'))
    run(add_key(relay.store, "good"))
    assert set(run(load_keys(relay.store))) == {"good"}


def test_a_new_key_works_at_once_and_exposes_its_groups(relay: Relay) -> None:
    relay.advance(2)  # the copy is older than miss_refresh
    _, key = run(add_key(relay.store, "bot", ("team-a",), ("claude-sonnet-*",)))
    # Header time: unknown to the copy, which is stale: left to the stage.
    assert relay.stage.check_headers({"x-api-key": key}) is None
    exchange = make_exchange(headers={"x-api-key": key})
    assert run_stage(relay.stage, exchange).error is None
    assert exchange.client == "bot"
    assert exchange.state["key"] == KeyInfo("bot", "managed", ("team-a",),
                                            ("claude-sonnet-*",))
    # Now known: admitted at header time too.
    assert relay.stage.check_headers({"x-api-key": key}) is None


def test_an_unknown_key_is_refused_with_at_most_one_read_per_miss_refresh(
        relay: Relay) -> None:
    relay.advance(2)
    before = relay.store.reads
    assert relay.admitted("nope-1") is None
    assert relay.admitted("nope-2") is None  # the copy is fresh: a miss is final
    error = relay.stage.check_headers({"authorization": "Bearer nope-3"})
    assert error is not None and error.status == 401
    assert relay.store.reads - before == 1


def test_disable_rotate_and_remove_take_effect_within_the_refresh(relay: Relay) -> None:
    _, key = run(add_key(relay.store, "bot"))
    relay.advance(5)  # a periodic refresh
    assert relay.admitted(key) == "bot"
    run(set_state(relay.store, "bot", "disabled"))
    assert relay.admitted(key) == "bot"  # until the next refresh
    relay.advance(5)
    assert relay.admitted(key) is None
    error = relay.stage.check_headers({"x-api-key": key})
    assert error is not None and "disabled" in error.message
    run(set_state(relay.store, "bot", "active"))
    relay.advance(5)
    assert relay.admitted(key) == "bot"
    _, new = run(rotate_key(relay.store, "bot"))
    relay.advance(5)
    assert relay.admitted(key) is None and relay.admitted(new) == "bot"
    run(remove_key(relay.store, "bot"))
    relay.advance(5)
    assert relay.admitted(new) is None
    assert relay.admitted("config-key") == "alice"  # the file's keys throughout


def test_a_managed_record_cannot_shadow_a_config_key(relay: Relay) -> None:
    record = ManagedKey("alice", hash_key("impostor"), "active", "now")
    run(relay.store.hash_set(KEYS_HASH, "alice", record.to_json()))
    relay.advance(5)
    assert relay.admitted("impostor") is None
    assert relay.admitted("config-key") == "alice"


def test_an_unavailable_store_keeps_the_last_copy(relay: Relay) -> None:
    _, key = run(add_key(relay.store, "bot"))
    relay.advance(5)
    relay.store.down = True
    relay.advance(5)
    assert relay.admitted(key) == "bot"


def test_config_keys_carry_no_groups_by_default() -> None:
    stage = AuthStage({"alice": bytes.fromhex(hash_key("alice-config-key-0123"))})
    exchange = make_exchange(headers={"x-api-key": "alice-config-key-0123"})
    run_stage(stage, exchange)
    assert exchange.state["key"] == KeyInfo("alice", "config")


def test_the_keys_command_refuses_what_it_cannot_do(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tests.relayproc import config_text
    from txrelay.cli import main

    memory = tmp_path / "memory.toml"
    memory.write_text(config_text())
    assert main(["keys", "-c", str(memory), "list"]) == 2
    assert 'kind = "redis"' in capsys.readouterr().err
    redis = tmp_path / "redis.toml"
    redis.write_text(config_text() + '\n[state]\nkind = "redis"\n')
    for args, fragment in ((("add", "tester"), "[[keys]] entry"),
                           (("add", "bad name"), "not a key name")):
        assert main(["keys", "-c", str(redis), *args]) == 2
        assert fragment in capsys.readouterr().err
