"""Key pools: choice, cooling and the current attempt's key."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txrelay.routing.keys import (
    KeyPool,
    PoolKey,
    cooldown_for,
    decode_cooling,
    encode_cooling,
    using_key,
)

POOL = KeyPool("p", (PoolKey("k0", "v0"), PoolKey("k1", "v1"), PoolKey("k2", "v2")))


def test_the_current_key_is_the_attempts() -> None:
    assert POOL.current() == "v0"
    with using_key("p", "k2"):
        assert POOL.current() == "v2"
        with using_key("other", "k1"):
            assert POOL.current() == "v0"  # another provider's choice
    assert POOL.current() == "v0"
    assert "v1" not in repr(POOL)


def test_cooling_keys_are_skipped_and_the_soonest_reported() -> None:
    cooling = {"k0": 110.0, "k1": 105.0}
    assert POOL.choose(cooling, 100.0, random.random) == "k2"
    assert POOL.choose(cooling, 100.0, random.random, preferred="k0") == "k2"
    assert POOL.choose(cooling, 100.0, random.random, exclude=("k2",)) is None
    assert POOL.choose({**cooling, "k2": 200.0}, 100.0, random.random) is None
    assert POOL.soonest({**cooling, "k2": 200.0}, 100.0) == 5.0
    assert POOL.choose(cooling, 106.0, random.random, preferred="k1") == "k1"


@given(st.randoms(use_true_random=False), st.sets(st.sampled_from(["k0", "k1", "k2"])))
def test_choice_is_a_ready_key(rnd: random.Random, cool: set[str]) -> None:
    chosen = POOL.choose({k: 50.0 for k in cool}, 10.0, rnd.random)
    assert (chosen is None) == (len(cool) == 3)
    assert chosen is None or chosen not in cool


def test_cooldowns_and_their_encoding() -> None:
    assert cooldown_for(None) == 5.0
    assert cooldown_for(12.0) == 12.0
    assert cooldown_for(1e9) == 3600.0
    assert decode_cooling({"a": encode_cooling(12.5), "b": b"junk"}) == {"a": 12.5}


def _auth_headers(backend: Any, key: str | None) -> Any:
    from twisted.internet.defer import Deferred

    with using_key("up", key):
        d = Deferred.fromCoroutine(backend.auth.headers())
    return d.result


@pytest.mark.parametrize(("kind", "options", "header", "prefix"), [
    ("openai-chat", {"dialect": "openai"}, "authorization", "Bearer "),
    ("anthropic", {}, "x-api-key", ""),
    ("anthropic", {"auth": "bearer"}, "authorization", "Bearer "),
    ("gemini", {}, "x-goog-api-key", ""),
])
def test_every_http_kind_sends_the_attempts_pool_key(kind: str, options: dict[str, Any],
                                                     header: str, prefix: str) -> None:
    from txrelay.config import parse_config
    from txrelay.service import build_backend

    raw = {"providers": [{"name": "up", "kind": kind, "base_url": "https://up.example/v1",
                          "options": options,
                          "api_keys": [{"env": "A", "name": "a"}, {"env": "B"}]}],
           "models": [{"id": "m", "provider": "up"}], "pipeline": [{"type": "translate"}]}
    cfg = parse_config(raw, env={"A": "value-a", "B": "value-b"})
    assert cfg.providers[0].api_key_names() == ("a", "key1")
    problems: list[str] = []
    backend = build_backend(cfg.providers[0], "providers[0]", None, problems, cfg)
    assert problems == [] and backend is not None
    assert _auth_headers(backend, "key1") == {header: prefix + "value-b"}
    assert _auth_headers(backend, "a") == {header: prefix + "value-a"}
    assert _auth_headers(backend, None) == {header: prefix + "value-a"}
