"""
Two relay processes on one real Redis server (issue 12.5): the ``limits`` stage's counters
and concurrency slots live in Redis, so the fleet enforces one limit to the request, and a
stream's slot comes back when the relay holding it drains or dies.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.fakeupstream import FakeOpenAI
from tests.integration.test_limits import answer, gated
from tests.redisproc import RedisServer, start_redis
from tests.relayproc import DEMO_KEY, SECOND_KEY, Relay, config_text, start_relay, toml_value

pytestmark = pytest.mark.integration

MODEL = "claude-sonnet-4-6"
HELLO = [{"role": "user", "content": "hello"}]
RPM = 5


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI(default=answer)
    f.start()
    yield f
    f.stop()


def relay_config(redis: RedisServer, fake: FakeOpenAI, slot_ttl: float) -> str:
    limits = {"keys": [{"name": "tester", "requests_per_minute": RPM},
                       {"name": "second", "concurrent_streams": 1}],
              "groups": [{"name": "team", "requests_per_minute": 2}],
              "slot_ttl": slot_ttl}
    text = config_text(
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "timeouts": {"connect": 2, "first_byte": 60, "idle": 60}}],
        models=[{"id": MODEL, "provider": "up", "upstream_model": "fake-model",
                 "patterns": ["claude-*"]}],
        pipeline=[{"type": "auth"}, {"type": "limits", "options": limits},
                  {"type": "model-map"}, {"type": "translate"}],
        server={"drain_timeout": 1},
    )
    state = {"kind": "redis", "url": redis.url, "on_unavailable": "closed"}
    return text + "\n[state]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in state.items())


def until(condition: Callable[[], Any], what: str, *relays: Relay) -> Any:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"never: {what}\n" + "\n".join(r.log()[-2000:] for r in relays))


def on_redis(relay: Relay) -> bool:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    try:
        conn.request("GET", "/health/ready")
        body = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return bool(body.get("detail", {}).get("state", {}).get("up"))


@pytest.fixture()
def pair(redis: RedisServer, fake: FakeOpenAI, tmp_path: Path) -> Iterator[tuple[Relay, Relay]]:
    redis.flush()
    relays = []
    for name, ttl in (("a", 120.0), ("b", 120.0)):
        (tmp_path / name).mkdir()
        relays.append(start_relay(tmp_path / name, relay_config(redis, fake, ttl)))
    a, b = relays
    until(lambda: on_redis(a) and on_redis(b), "both relays on Redis", a, b)
    yield a, b
    for r in relays:
        r.stop()


def create(relay: Relay, key: str = DEMO_KEY) -> bool:
    """Whether the relay served the request (False: 429)."""
    with anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0) as client:
        try:
            client.messages.create(model=MODEL, max_tokens=20, messages=HELLO)
        except anthropic.RateLimitError:
            return False
    return True


def test_two_relays_enforce_one_requests_per_minute_limit(pair: tuple[Relay, Relay]) -> None:
    a, b = pair
    outcomes = [create(a if i % 2 == 0 else b) for i in range(3 * RPM)]
    assert outcomes.count(True) == RPM  # exactly the limit, though each relay saw < 2/3 of it
    assert outcomes == [True] * RPM + [False] * (2 * RPM)


def hold_stream(relay: Relay, fake: FakeOpenAI) -> tuple[threading.Event, threading.Event,
                                                          threading.Thread]:
    """A stream of key ``second`` on ``relay``, open until the gate is set."""
    gate, started = threading.Event(), threading.Event()
    fake.push(gated(gate))

    def run() -> None:
        with anthropic.Anthropic(base_url=relay.url, api_key=SECOND_KEY,
                                 max_retries=0) as client:
            try:
                with client.messages.stream(model=MODEL, max_tokens=20, messages=HELLO) as s:
                    for event in s:
                        if event.type == "message_start":
                            started.set()
            except Exception:  # the relay drained or died under it
                pass

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert started.wait(30)
    return gate, started, worker


def stream_on(relay: Relay) -> bool:
    """Whether key ``second`` may stream on ``relay`` now (False: 429)."""
    with anthropic.Anthropic(base_url=relay.url, api_key=SECOND_KEY, max_retries=0) as client:
        try:
            with client.messages.stream(model=MODEL, max_tokens=20, messages=HELLO) as s:
                s.get_final_message()
        except anthropic.RateLimitError:
            return False
    return True


def test_a_stream_slot_is_shared_and_comes_back_when_its_relay_drains(
        pair: tuple[Relay, Relay], fake: FakeOpenAI) -> None:
    a, b = pair
    gate, _, worker = hold_stream(a, fake)
    assert not stream_on(b)  # the slot is held on the other relay
    a.stop(signal.SIGTERM)  # drain: the live stream is ended after drain_timeout (1 s)
    # The slot was released as the stream ended, long before its 120 s expiry.
    until(lambda: stream_on(b), "the drained relay's slot comes back", a, b)
    gate.set()
    worker.join(30)


def test_a_dead_relays_slot_expires(redis: RedisServer, fake: FakeOpenAI,
                                    tmp_path: Path) -> None:
    redis.flush()
    relays = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        relays.append(start_relay(tmp_path / name, relay_config(redis, fake, 3.0)))
    a, b = relays
    try:
        until(lambda: on_redis(a) and on_redis(b), "both relays on Redis", a, b)
        gate, _, worker = hold_stream(a, fake)
        assert not stream_on(b)
        a.stop(signal.SIGKILL)  # no chance to release: the slot expires after slot_ttl
        until(lambda: stream_on(b), "the dead relay's slot expires", a, b)
        gate.set()
        worker.join(30)
    finally:
        for r in relays:
            r.stop()


def test_managed_keys_carry_their_group_and_models(pair: tuple[Relay, Relay]) -> None:
    """Keys added with ``txrelay keys add --group --models``: limited by the group's shared
    count on both relays, and refused the models their record does not allow."""
    a, b = pair
    config = a.log_path.parent / "relay.toml"

    def add(name: str) -> str:
        out = subprocess.run([sys.executable, "-m", "txrelay", "keys", "--config", str(config),
                              "add", name, "--group", "team", "--models", "claude-*"],
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()[0]

    def refused_model(relay: Relay, key: str) -> str | None:
        """The 403 for a model the key may not use, once the relay knows the new key (a
        new managed key reaches every relay within about a second); None before."""
        with anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0) as client:
            try:
                client.messages.create(model="gpt-4o", max_tokens=20, messages=HELLO)
            except anthropic.AuthenticationError:
                return None
            except anthropic.PermissionDeniedError as e:
                return e.message
        raise AssertionError("gpt-4o was served")

    one, two = add("bot-one"), add("bot-two")
    for relay in (a, b):
        for name, key in (("bot-one", one), ("bot-two", two)):
            message = until(lambda r=relay, k=key: refused_model(r, k), "the key is known",
                            a, b)
            assert f"key '{name}' may not use model 'gpt-4o' (allowed: claude-*)" in message
    # Refused models were not counted; the group's 2 requests a minute are shared.
    assert [create(a, one), create(b, two), create(a, two), create(b, one)] == [
        True, True, False, False]
