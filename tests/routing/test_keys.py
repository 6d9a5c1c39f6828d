"""Key pools: choice, cooling and the current attempt's key."""

from __future__ import annotations

import random

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
